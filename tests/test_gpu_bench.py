"""bench/gpu.sh, the one script for every GPU measurement (issue 17), on its CPU path.

The quick run must finish with every section in its JSON: the parts a CPU can run with
figures above zero, the GPU-only part (nvJPEG) skipped with its reason. A module that is
missing (faiss, sqlalchemy on a bare GPU machine without wheels) skips its parts with a
reason rather than failing the run. The GPU letterbox and the nvJPEG pipeline run here
on the CPU (torchvision decodes on either device) and must match Pillow's letterbox; so does
build_index with the product's torchvision decoding switched on (LOOKALIKE_GPU_DECODE=1).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GPU_BENCH_WITHOUT", None)
    env.update(OUT=str(tmp_path / "out"), PYTHON=sys.executable, GPU_BENCH_WHEELS=str(tmp_path / "no-wheels"))
    env.update(extra)
    return env


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _importable(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _ok(section: dict, key: str) -> None:
    assert section["status"] == "ok", section
    assert section[key] > 0, section


def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    env = _env(tmp_path, GPU_BENCH_QUICK="1")
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh")], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    r = json.loads((out / "gpu.json").read_text())
    assert (out / "gpu.log").read_text().strip()
    assert r["complete"] is True and r["quick"] is True
    for key in ("torch", "cpu_count", "cuda_available"):
        assert key in r["machine"], key

    _ok(r["training"], "images_per_s")
    assert r["training"]["size"] == 128 and r["training"]["steps"] >= 1

    assert r["model"]["pooling"] == "vlad"  # the default search vector, fitted as training fits it
    ix = r["indexing"]
    assert ix["corpus"]["usable"] > 0 and ix["corpus"]["size"] == [640, 480]
    _ok(ix["pillow_threads"], "images_per_s")
    assert ix["pillow_threads"]["images"] == ix["corpus"]["usable"]
    if _cuda():
        _ok(ix["nvjpeg"], "images_per_s")
    else:
        assert ix["nvjpeg"]["status"] == "skipped" and "CUDA" in ix["nvjpeg"]["reason"]
    # build_index end to end with the product's default decoder, and with the other one beside it:
    # on a CPU that is torchvision's decoder (encoder/gpu_decode.py), on CUDA Pillow's.
    other = "build_index_pillow" if _cuda() else "build_index_torchvision"
    if _importable("faiss", "sqlalchemy"):
        for name in ("build_index", other):
            _ok(ix[name], "images_per_s")
            assert ix[name]["summary"]["embedded"] == ix["corpus"]["usable"], name
        assert "Pillow" in ix["build_index"]["decode"] or _cuda()
        assert "torchvision" in ix[other]["decode"] or _cuda()
        assert "LOOKALIKE_GPU_DECODE" in ix[other]["decode"]
    else:
        assert ix["build_index"]["status"] == "skipped" and ix["build_index"]["reason"]

    q = r["query"]
    _ok(q["embed_one"], "p50_ms")
    assert q["embed_one"]["p99_ms"] >= q["embed_one"]["p50_ms"]
    if _importable("faiss"):
        _ok(q["faiss_flat"], "p50_ms")
        assert q["faiss_flat"]["vectors"] == 100_000
    else:
        assert q["faiss_flat"]["status"] == "skipped" and q["faiss_flat"]["reason"]

    t = r["targets"]
    assert t["training_images_per_s"]["target"] == 30_000
    assert t["indexing_images_per_s"]["target"] == 5_000
    for key in ("training_images_per_s", "indexing_images_per_s"):
        assert isinstance(t[key]["pass"], bool) and t[key]["measured"] > 0 and t[key]["figure"]
    assert "targets" in proc.stdout and "img/s" in proc.stdout  # the printed table


def test_missing_modules_skip_their_parts_with_a_reason(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--quick", "--parts", "indexing,query", "--images", "6"]
    cmd += ["--without", "faiss,sqlalchemy,scipy", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["complete"] is True
    assert r["training"]["status"] == "skipped"
    assert r["indexing"]["build_index"]["status"] == "skipped"
    assert "faiss" in r["indexing"]["build_index"]["reason"]
    assert r["query"]["faiss_flat"]["status"] == "skipped"
    # without SciPy no VLAD words can be fitted: the model's own vector, and the JSON says why
    assert r["model"]["pooling"] == "mean" and "scipy" in r["model"]["dir"]
    _ok(r["indexing"]["pillow_threads"], "images_per_s")
    _ok(r["query"]["embed_one"], "p50_ms")
    assert r["targets"]["indexing_images_per_s"]["figure"] == "indexing.pillow_threads.images_per_s"


@pytest.fixture(scope="module")
def bench_on_path():
    """bench/ on sys.path, as when bench/gpu_bench.py runs as a script: its gpu_*.py modules import
    each other and bench/common.py beside them."""
    sys.path.insert(0, str(BENCH))
    try:
        yield
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def gpu_corpus(bench_on_path):
    """bench/gpu_corpus.py: the generated JPEGs and the bench's model."""
    return importlib.import_module("gpu_corpus")


@pytest.fixture(scope="module")
def gpu_indexing(bench_on_path):
    """bench/gpu_indexing.py: the indexing pipelines."""
    return importlib.import_module("gpu_indexing")


# torchvision 0.29 deprecates its image decoders in favour of TorchCodec; the GPU machine's 0.26
# does not, and nvJPEG through torchvision is what the bench measures there.
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
def test_torchvision_pipeline_and_letterbox_match_pillow(
    tmp_path: Path, gpu_corpus, gpu_indexing, torch_one_thread
) -> None:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from encoder.images import load_image

    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.jpg"
        gpu_corpus._make_jpeg((str(p), i))
        paths.append(p)
    enc = gpu_indexing.load_encoder(gpu_corpus.make_model(tmp_path / "model"), torch.device("cpu"))

    res = gpu_indexing.nvjpeg_pipeline(enc, paths, batch=2, readers=2, cap=60)
    assert res["status"] == "ok" and res["images"] == 5 and res["images_per_s"] > 0

    imgs = [
        decode_jpeg(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB)
        for p in paths
    ]
    x = gpu_indexing.gpu_letterbox(imgs, enc.image_size)
    assert x.shape == (5, 3, enc.image_size, enc.image_size)
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = np.stack([load_image(str(p), enc.image_size) for p in paths]).astype(np.float32) / 255
    got = x.permute(0, 2, 3, 1).numpy()
    assert np.abs(got - ref).mean() < 0.01  # bilinear on the GPU vs Pillow's draft + bicubic
    assert np.allclose(got[:, 0], 1.0)  # 640x480 in a square: white bars above and below
    cos = (enc.embed_pixels((ref * 255).round().astype(np.uint8)) * gpu_indexing.embed_tensor(enc, x)).sum(axis=1)
    assert cos.min() > 0.99


def test_the_bench_model_has_the_default_search_vector_and_the_device_path_uses_it(
    tmp_path: Path, gpu_corpus, gpu_indexing, torch_one_thread
) -> None:
    """make_model fits VLAD as training would; embed_tensor (the nvJPEG path) gives Encoder.embed_pixels' vectors."""
    import torch

    enc = gpu_indexing.load_encoder(gpu_corpus.make_model(tmp_path / "model", fit_images=8), torch.device("cpu"))
    assert enc.vlad is not None and not (tmp_path / "model" / "fit-jpegs").exists()
    pixels = np.random.default_rng(0).integers(0, 256, (3, enc.image_size, enc.image_size, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    assert np.allclose(gpu_indexing.embed_tensor(enc, x), enc.embed_pixels(pixels), atol=1e-5)
