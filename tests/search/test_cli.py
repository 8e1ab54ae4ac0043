"""The command line, run in-process."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
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


def test_train_from_the_shipped_base_model(tiny_folder: Path, tmp_path: Path) -> None:
    from encoder.base import BASE_MODEL_DIR
    from encoder.checkpoint import read_config

    out = tmp_path / "model"
    res = runner.invoke(app, ["train", str(tiny_folder), "--out", str(out), "--init-from", "base", "--epochs", "1"])
    if not (BASE_MODEL_DIR / "model.safetensors").exists():
        assert res.exit_code == 2 and "ships no base model" in res.output
        return
    assert res.exit_code == 0, res.output
    assert read_config(out)[0] == read_config(BASE_MODEL_DIR)[0]  # the base model's configuration, fine-tuned
    assert read_config(out)[1]["started_from"]["model"] == "base"
    # another configuration cannot start from it: one line, no traceback
    res = runner.invoke(
        app, ["train", str(tiny_folder), "--out", str(tmp_path / "m2"), "--init-from", "base", "--image-size", "32"]
    )
    assert res.exit_code == 2 and "init_from" in res.output and "Traceback" not in res.output


def test_train_user_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["train", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "empty"), "--kind", "nope"])
    assert res.exit_code == 2 and "unknown --kind" in res.output


def test_bad_settings_are_one_line_but_library_bugs_keep_their_traceback(tiny_folder: Path, tmp_path: Path) -> None:
    from search.cli.common import user_errors

    res = runner.invoke(app, ["train", str(tiny_folder), "--out", str(tmp_path / "m"), "--image-size", "30"])
    assert res.exit_code == 2 and "error:" in res.output and "divisible" in res.output  # a ConfigError

    @user_errors
    def buggy() -> None:
        raise ValueError("a bug, not the user's mistake")

    with pytest.raises(ValueError, match="a bug"):  # not turned into "error: ..." and exit 2
        buggy()


def test_train_with_vlad_pooling_then_index_and_query(tiny_folder: Path, tmp_path: Path) -> None:
    """`--pooling vlad` through the product path: the index holds VLAD vectors; a crop finds its original."""
    import json

    from PIL import Image

    model = tmp_path / "model"
    args = ["train", str(tiny_folder), "--out", str(model), "--image-size", "32", "--epochs", "1", "--pooling", "vlad"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (model / "vlad.safetensors").exists()
    res = runner.invoke(app, ["index", str(tiny_folder), "--model", str(model), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{") :])["embedded"] == 12  # after the progress bar
    original = sorted(tiny_folder.rglob("*.png"))[5]
    with Image.open(original) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(tmp_path / "crop.png")
    res = runner.invoke(app, ["query", str(tmp_path / "crop.png"), "--index", str(tiny_folder), "-k", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["results"][0]["path"] == original.relative_to(tiny_folder).as_posix()
    res = runner.invoke(app, ["train", str(tiny_folder), "--out", str(tmp_path / "m2"), "--pooling", "max"])
    assert res.exit_code == 2 and "unknown pooling" in res.output and "Traceback" not in res.output


def test_index_and_up_pass_the_pooling_to_the_training_they_start(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`index --pooling` and `up --pooling` reach the TrainConfig of the model they train (the
    training itself is the 500-step default here, too long for this suite: the call is recorded)."""
    import indexer

    seen = []

    def record(*args, train_config=None, **kw):
        seen.append(train_config)
        raise SystemExit(3)

    monkeypatch.setattr(indexer, "build_index", record)
    assert runner.invoke(app, ["index", str(tiny_folder), "--pooling", "mean"]).exit_code == 3
    assert runner.invoke(app, ["index", str(tiny_folder)]).exit_code == 3
    assert runner.invoke(app, ["up", str(tiny_folder), "--no-serve", "--pooling", "mean"]).exit_code == 3
    assert runner.invoke(app, ["up", str(tiny_folder), "--no-serve"]).exit_code == 3
    assert seen[0].pooling == "mean" and seen[1] is None  # None: build_index's own default training
    assert seen[2].pooling == "mean" and seen[3].pooling == "auto"


def test_index_then_query(tiny_folder: Path, tmp_path: Path) -> None:
    import json

    model = tmp_path / "model"
    args = ["train", str(tiny_folder), "--out", str(model), "--image-size", "32", "--latent-dim", "8", "--epochs", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (tiny_folder / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = runner.invoke(app, ["index", str(tiny_folder), "--model", str(model)])
    assert res.exit_code == 0, res.output
    assert re.search(r"added\s+12\b", res.output) and re.search(r"failed\s+1\b", res.output)
    assert "junk.jpg: not a recognised image format" in res.output
    assert "neighbours of 12 images computed" in res.output
    res = runner.invoke(app, ["index", str(tiny_folder), "--json"])
    summary = json.loads(res.output)
    assert summary["unchanged"] == 13 and summary["embedded"] == 0
    assert summary["neighbours"] == ""  # nothing changed: the table was not touched
    query_img = sorted(p for p in tiny_folder.rglob("*.png") if ".lookalike" not in p.parts)[0]  # an indexed one
    res = runner.invoke(app, ["query", str(query_img), "--index", str(tiny_folder), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    paths = [r["path"] for r in out["results"]]
    rel = query_img.relative_to(tiny_folder).as_posix()
    assert len(paths) == 3 and rel not in paths  # itself excluded
    assert [q["path"] for q in out["query"]["indexed"]] == [rel]  # ... and the answer says why
    res = runner.invoke(app, ["query", str(query_img), "--index", str(tiny_folder), "-k", "3"])
    assert res.exit_code == 0 and f"= indexed image #{out['query']['indexed'][0]['id']} ({rel})" in res.output
    first = out["results"][0]
    res = runner.invoke(app, ["query", "--id", str(first["id"]), "--index", str(tiny_folder)])
    assert res.exit_code == 0 and "similarity" in res.output
    # each row: rank, similarity, its share of the collection's random pairs ("top 8.3%"), id, path
    rows = [line.split() for line in res.output.splitlines() if re.match(r"\s+\d+\s+-?\d\.\d{4}\s", line)]
    assert len(rows) == 10 and all(r[2] == "top" and r[3].endswith("%") for r in rows)
    shares = [float(r[3].strip("<%")) for r in rows]
    assert shares == sorted(shares)  # the most similar first: the smallest share of pairs above it
    assert f"query: indexed image #{first['id']} ({first['path']})" in res.output  # names the query image
    res = runner.invoke(app, ["query", "--id", "99999", "--index", str(tiny_folder)])
    assert res.exit_code == 2 and "no indexed image" in res.output
    res = runner.invoke(app, ["query", str(tiny_folder / "junk.jpg"), "--index", str(tiny_folder)])
    assert res.exit_code == 2 and "junk.jpg" in res.output


def test_query_grid_picture(tiny_folder: Path, tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from encoder.images import letterbox, open_image
    from search.cli.result_grid import PAD, TILE

    model = tmp_path / "model"
    args = ["train", str(tiny_folder), "--out", str(model), "--image-size", "32", "--latent-dim", "8", "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["index", str(tiny_folder), "--model", str(model)]).exit_code == 0
    query_img = sorted(tiny_folder.rglob("*.png"))[0]
    pic = tmp_path / "grid.png"
    res = runner.invoke(
        app, ["query", str(query_img), "--index", str(tiny_folder), "-k", "4", "--json", "--grid", str(pic)]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["results"]  # stdout stays pure JSON
    grid = np.asarray(Image.open(pic).convert("RGB")).astype(int)
    assert grid.shape[1] == PAD + 5 * (TILE + PAD)  # the query and 4 results, one row

    def tile(i: int) -> np.ndarray:
        x = PAD + i * (TILE + PAD)
        return grid[PAD : PAD + TILE, x : x + TILE]

    def expected(path: Path) -> np.ndarray:  # decoded as everywhere else: transparency on white
        return np.asarray(letterbox(open_image(path)[0], TILE)).astype(int)

    assert np.abs(tile(0) - expected(query_img)).mean() < 3  # the query itself
    for i, h in enumerate(hits, 1):  # each result in rank order (thumbnails are JPEG: a little off)
        assert np.abs(tile(i) - expected(tiny_folder / h["path"])).mean() < 12
    res = runner.invoke(
        app,
        [
            "query",
            "--id",
            str(hits[0]["id"]),
            "--index",
            str(tiny_folder),
            "-k",
            "2",
            "--grid",
            str(tmp_path / "by-id.png"),
        ],
    )
    assert res.exit_code == 0 and "wrote" in res.output
    assert Image.open(tmp_path / "by-id.png").size[0] == PAD + 3 * (TILE + PAD)


def test_query_without_index(tmp_path: Path) -> None:
    res = runner.invoke(app, ["query", "--id", "1", "--index", str(tmp_path)])
    assert res.exit_code == 2 and "lookalike index" in res.output


def test_cli_import_is_light() -> None:
    """Decode workers re-import the main module: it must not drag in torch, faiss or SQLAlchemy."""
    import subprocess
    import sys

    heavy = "{'torch', 'faiss', 'sqlalchemy'}"
    code = f"import sys, search.cli, encoder.decoding; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_option_shows_its_default_in_help() -> None:
    """Plain help: with rich markup, "[default: 8000]" in a help text was read as a markup tag and
    vanished ("Port to serve on ."), and flags showed as <bool>."""
    import click
    import typer

    group = typer.main.get_command(app)
    missing = []
    for name, command in group.commands.items():
        ctx = click.Context(command, info_name=name)
        for p in command.params:
            if p.param_type_name != "option" or p.is_flag or p.name == "help" or p.required:
                continue
            record = p.get_help_record(ctx)
            if record is None or "[default:" not in record[1]:
                missing.append(f"{name} {record[0] if record else p.name}")
    assert not missing, missing
    res = runner.invoke(app, ["serve", "--help"])
    assert "[default: 8000]" in res.output and "<bool>" not in res.output


def test_models_lists_each_kind_with_a_line_and_marks_the_default() -> None:
    from encoder import ModelConfig, list_models

    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    rows = [line for line in res.output.splitlines() if line[2:].split(" ", 1)[0] in list_models()]
    assert len(rows) == len(list_models())
    assert all(len(r[2:].split(None, 1)[1]) > 10 for r in rows)  # each says what it is
    [marked] = [r for r in rows if r.startswith("*")]
    assert marked.split()[1] == ModelConfig().kind


def test_a_busy_port_is_reported_before_any_work(tiny_folder: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from search.cli.common import UsageError
        from search.cli.serve import bind

        with pytest.raises(UsageError, match=rf"cannot serve on 127.0.0.1:{port}: .*pick another with --port N"):
            bind("127.0.0.1", port)  # what `serve` does first
        folder = tmp_path / "photos"
        shutil.copytree(tiny_folder, folder)
        res = runner.invoke(app, ["up", str(folder), "--port", str(port)])
        assert res.exit_code == 2 and f"127.0.0.1:{port}" in res.output and "--port" in res.output
        assert not (folder / ".lookalike").exists()  # refused before training a model for minutes


def test_index_of_an_empty_folder_leaves_nothing_behind(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["index", str(empty)])
    assert res.exit_code == 2 and "0 decodable images" in res.output
    assert list(empty.iterdir()) == []


def test_query_grid_wraps(tiny_folder: Path, tmp_path: Path) -> None:
    """k=8: the query and 8 results in rows of COLUMNS, not one 1,500-pixel strip."""
    import numpy as np
    from PIL import Image

    from search.cli.result_grid import CAPTION, COLUMNS, PAD, TILE

    model = tmp_path / "model"
    args = ["train", str(tiny_folder), "--out", str(model), "--image-size", "32", "--latent-dim", "8", "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["index", str(tiny_folder), "--model", str(model)]).exit_code == 0
    pic = tmp_path / "grid.png"
    res = runner.invoke(app, ["query", "--id", "1", "--index", str(tiny_folder), "-k", "8", "--grid", str(pic)])
    assert res.exit_code == 0, res.output
    grid = np.asarray(Image.open(pic).convert("RGB"))
    rows = -(-9 // COLUMNS)
    assert grid.shape[:2] == (PAD + rows * (TILE + CAPTION + PAD), PAD + COLUMNS * (TILE + PAD))
    last = grid[PAD + (TILE + CAPTION + PAD) : PAD + (TILE + CAPTION + PAD) + TILE, PAD : PAD + TILE]
    assert last.std() > 0  # the 7th tile starts the second row


def test_index_merge_puts_the_vectors_in_one_segment(tiny_folder: Path, tmp_path: Path) -> None:
    import json

    from indexer import Manifest
    from indexer.layout import SEGMENTS, default_index_dir
    from indexer.segments import SegmentStore
    from search.engine import Engine

    model = tmp_path / "model"
    args = ["train", str(tiny_folder), "--out", str(model), "--image-size", "32", "--latent-dim", "8", "--epochs", "1"]
    assert runner.invoke(app, args).exit_code == 0
    images = sorted(p for p in tiny_folder.rglob("*.png") if ".lookalike" not in p.parts)
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in images[6:]:  # half now, half in a second run: two segments
        shutil.move(p, aside / p.name)
    assert runner.invoke(app, ["index", str(tiny_folder), "--model", str(model)]).exit_code == 0
    for p in images[6:]:
        shutil.move(aside / p.name, p)
    assert runner.invoke(app, ["index", str(tiny_folder)]).exit_code == 0
    idx = default_index_dir(tiny_folder)
    assert len(SegmentStore.open(idx / SEGMENTS, 8, writable=False).segments) == 2
    before = Manifest.read(idx)
    res = runner.invoke(app, ["index", str(tiny_folder), "--merge"])
    assert res.exit_code == 0, res.output
    assert "2 vector segments merged into 1" in res.output
    store = SegmentStore.open(idx / SEGMENTS, 8, writable=False)
    assert len(store.segments) == 1 and len(store) == 12
    after = Manifest.read(idx)
    assert before is not None and after is not None and after.generation == before.generation + 1
    with Engine(idx) as engine:  # the new generation reads the merged segment
        assert engine.snapshot().manifest.count == 12
        assert engine.search_path(images[0].relative_to(tiny_folder).as_posix())
    res = runner.invoke(app, ["index", str(tiny_folder), "--merge", "--json"])
    assert json.loads(res.output)["merged"] == "1 vector segment, nothing to merge"
    assert Manifest.read(idx).generation == after.generation  # nothing merged, nothing changed: no publish
