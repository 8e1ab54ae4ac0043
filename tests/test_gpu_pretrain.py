"""bench/pretrain_pack.py and bench/gpu_pretrain.sh, the GPU half of issue 18's written-down test,
on the CPU path.

The pack must train exactly as the corpus it came from: every packed image decodes to the pixels
the trainer gets from the original (lossless, and letterboxing a picture already at the size
changes nothing); files the decoder refuses are left out and listed, and a pack is never written
over. The script must pretrain each arm with the trunk it names, bring each model back as one
tarball that unpacks into a model directory the fine-tune can start from, and fail (not hang or
pass) when the pack is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_module
from PIL import Image

from encoder.images import load_image

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pp():
    yield from bench_module("pretrain_pack")


def _corpus(root: Path, n: int = 40) -> Path:
    """Small pictures of several kinds: RGBA PNGs with transparency, JPEGs of another aspect,
    palette GIFs, and one file that is not an image."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"package{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        pixels[: h // 3, :, 3] = 0  # a transparent band: composited on the letterbox's background
        img = Image.fromarray(pixels, "RGBA")
        if i % 3 == 0:
            img.save(folder / f"img{i}.png")
        elif i % 3 == 1:
            img.convert("RGB").save(folder / f"img{i}.jpg", quality=85)
        else:
            img.convert("RGB").convert("P").save(folder / f"img{i}.gif")
    # two files that differ only in suffix stay two
    Image.new("RGB", (30, 50), (200, 10, 10)).save(root / "package0" / "same.png")
    Image.new("RGB", (50, 30), (10, 200, 10)).save(root / "package0" / "same.jpg")
    (root / "package1" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "provenance.json").write_text(json.dumps({"images": n}))
    return root


def test_the_pack_decodes_to_the_trainers_pixels(pp, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    info = pp.pack(corpus, tmp_path / "pack", 64)
    packed = sorted((tmp_path / "pack").rglob("*.webp"))
    assert info["images"] == len(packed) == 42
    assert [s["path"] for s in info["skipped"]] == ["package1/broken.png"]
    assert "not a recognised image" in info["skipped"][0]["error"]
    for webp in packed:
        original = corpus / webp.relative_to(tmp_path / "pack").with_suffix("")
        assert np.array_equal(load_image(webp, 64), load_image(original, 64)), webp
    assert (tmp_path / "pack" / "package0" / "same.png.webp").exists()
    assert (tmp_path / "pack" / "package0" / "same.jpg.webp").exists()
    assert json.loads((tmp_path / "pack" / "provenance.json").read_text()) == {"images": 40}
    assert json.loads((tmp_path / "pack" / "pack.json").read_text())["size"] == 64
    with pytest.raises(SystemExit, match="exists"):
        pp.pack(corpus, tmp_path / "pack", 64)


def _script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_pretrain.sh")],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_each_arm_comes_back_as_a_model_the_fine_tune_can_start_from(pp, tmp_path: Path) -> None:
    from encoder.base import start_config
    from encoder.checkpoint import read_config

    pp.pack(_corpus(tmp_path / "corpus"), tmp_path / "pack", 64)
    out = tmp_path / "out"
    done = _script(
        tmp_path,
        OUT=str(out),
        GPU_PRETRAIN_CORPUS=str(tmp_path / "pack"),
        GPU_PRETRAIN_EPOCHS="2",
        GPU_PRETRAIN_ARMS="narrow:4,8,16,32 wide:8,16,32,64",
        GPU_PRETRAIN_DEVICE="cpu",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "gpu_pretrain.json").read_text())
    assert summary["narrow"]["channels"] == [4, 8, 16, 32]
    assert summary["wide"]["channels"] == [8, 16, 32, 64]
    for arm in summary.values():
        assert arm["epochs_run"] == 2 and arm["device"] == "cpu" and arm["train_images_per_second"] > 0
    # what comes back from the device: at most 8 files, none in a folder
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_pretrain.json",
        "gpu_pretrain.log",
        "narrow.tar.gz",
        "wide.tar.gz",
    ]
    unpack = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_pretrain.sh"), "--unpack", str(out), str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unpack.returncode == 0, unpack.stderr
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["gpu-narrow", "gpu-wide"]
    dest = tmp_path / "models" / "gpu-wide"
    cfg, meta = read_config(dest)
    assert cfg.channels == (8, 16, 32, 64)
    assert start_config(None, dest) == cfg  # what a fine-tune from it will train
    assert meta["train"]["augment"] == "strong" and meta["train"]["epochs"] == 2


def test_a_missing_pack_fails_with_its_reason(tmp_path: Path) -> None:
    done = _script(tmp_path, OUT=str(tmp_path / "out"), GPU_PRETRAIN_CORPUS=str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "no packed corpus" in done.stdout
