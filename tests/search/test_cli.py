"""The command line, run in-process."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from search.cli import app

runner = CliRunner()


def test_every_command_has_help() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__
        res = runner.invoke(app, [name, "--help"])
        assert res.exit_code == 0, name
        assert (cmd.callback.__doc__ or "").strip(), f"{name} has no help text"


def test_train_end_to_end(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    res = runner.invoke(
        app, ["train", str(tiny_folder), "--out", str(out), "--image-size", "32", "--latent-dim", "8", "--epochs", "2"]
    )
    assert res.exit_code == 0, res.output
    assert "trained conv on 12 images" in res.output
    assert (out / "model.safetensors").exists() and (out / "reconstructions.png").exists()


def test_train_user_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "empty"), "--kind", "nope"])
    assert res.exit_code == 2 and "unknown --kind" in res.output
