"""denoise, reconstruct, generate, compress and evaluate, run in-process on tiny saved models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_images
from PIL import Image
from typer.testing import CliRunner

from encoder import create_model, save_model
from search.cli import app

runner = CliRunner()
TINY = dict(image_size=32, channels=(8, 16), latent_dim=8, codebook_size=16, code_dim=4)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(tmp_path: Path, kind: str, **extra) -> Path:
    torch.manual_seed(0)
    out = tmp_path / kind
    save_model(create_model(kind, **TINY, **extra).eval(), out)
    return out


IMAGE = str(sample_images(1)[0])


def test_denoise_writes_an_image(tmp_path: Path) -> None:
    out = tmp_path / "clean.png"
    res = runner.invoke(app, ["denoise", IMAGE, "--model", str(_model(tmp_path, "denoising")), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (32, 32)


def test_reconstruct_writes_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "pair.png"
    res = runner.invoke(app, ["reconstruct", IMAGE, "-m", str(_model(tmp_path, "conv")), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "reconstruction error" in res.output
    w, h = Image.open(out).size
    assert w > 2 * 32 and h >= 32


def test_no_command_writes_beside_the_image_by_default(tmp_path: Path) -> None:
    """The image's folder is usually an indexed one: the next `index` would index the picture."""
    folder = tmp_path / "photos"
    folder.mkdir()
    image = folder / "bird.png"
    image.write_bytes(Path(IMAGE).read_bytes())
    model = _model(tmp_path, "vae")
    res = runner.invoke(app, ["reconstruct", str(image), "-m", str(model)])
    assert res.exit_code == 0, res.output
    assert (model / "reconstructions" / "bird_reconstruction.png").is_file()
    res = runner.invoke(app, ["generate", "-m", str(model), "--n", "2"])
    assert res.exit_code == 0, res.output
    assert (model / "samples.png").is_file()
    assert [p.name for p in folder.iterdir()] == ["bird.png"]  # nothing written beside it


def test_generate_from_vae_and_cvae_label(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["generate", "-m", str(_model(tmp_path, "vae")), "--n", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 4 samples of 32 px: 2 x 2 tiles, 2 px apart
    tiles = [grid[2 + r * 34 : 34 + r * 34, 2 + c * 34 : 34 + c * 34] for r in range(2) for c in range(2)]
    assert all(t.std() > 0 for t in tiles)  # drawn, not blank
    assert len({t.tobytes() for t in tiles}) == 4  # four different samples of the prior
    cvae = str(_model(tmp_path, "cvae", labels=("birds", "chess")))
    res = runner.invoke(app, ["generate", "-m", cvae, "--n", "3", "--label", "chess", "-o", str(out)])
    assert res.exit_code == 0 and "'chess'" in res.output, res.output
    res = runner.invoke(app, ["generate", "-m", cvae, "--label", "zebra", "-o", str(out)])
    assert res.exit_code == 2 and "unknown label" in res.output
    res = runner.invoke(app, ["generate", "-m", str(_model(tmp_path, "conv")), "-o", str(out)])
    assert res.exit_code == 2 and "cannot generate" in res.output


def test_compress_reports_ratios_for_vqvae_only(tmp_path: Path) -> None:
    res = runner.invoke(app, ["compress", IMAGE, "-m", str(_model(tmp_path, "vqvae")), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["code_bytes"] == 8 * 8 * 4 / 8  # 64 cells of 4 bits
    assert report["ratio_vs_png"] == pytest.approx(report["png_bytes"] / report["code_bytes"])
    res = runner.invoke(app, ["compress", IMAGE, "-m", str(_model(tmp_path, "conv"))])
    assert res.exit_code == 2 and "no discrete codes" in res.output


def test_evaluate_writes_the_report(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    model = str(_model(tmp_path, "conv"))
    res = runner.invoke(app, ["evaluate", str(tiny_folder), "-m", model, "--out", str(out), "--near-duplicates", "3"])
    assert res.exit_code == 0, res.output
    assert "mAP@10" in res.output and "pixels 32px" in res.output
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.png"}
