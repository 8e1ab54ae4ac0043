"""bench/gpu_bench.py's inputs: generated 640x480 JPEGs and an untrained default-config model.

Top-level imports stay light (stdlib only): `generate` starts its JPEG writers with ``spawn``,
and each of them imports this module to unpickle `_make_jpeg` (and re-imports gpu_bench.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 640, 480
JPEG_QUALITY = 90

_NOISE: Any = None


def _make_jpeg(job: tuple[str, int]) -> int:
    """One 640x480 JPEG at quality 90: smooth random colour fields plus sensor-like noise; returns its bytes."""
    import numpy as np
    from PIL import Image

    global _NOISE
    if _NOISE is None:  # one noise field per worker, sliced at a random offset per image: cheap and unique
        _NOISE = np.random.default_rng(os.getpid()).normal(0, 5, (HEIGHT + 64, WIDTH + 64, 3)).astype(np.int16)
    path, seed = job
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), dtype=np.int16)
    dy, dx = (int(v) for v in rng.integers(0, 64, 2))
    pixels = np.clip(base + _NOISE[dy : dy + HEIGHT, dx : dx + WIDTH], 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=JPEG_QUALITY)
    return os.path.getsize(path)


def generate(folder: Path, n: int, cap: float) -> dict[str, Any]:
    """Write up to `n` JPEGs into `folder` with one process per core, stopping at `cap` seconds."""
    jobs = []
    for i in range(n):
        sub = folder / f"set{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((str(sub / f"img_{i:06d}.jpg"), i))
    t0 = time.perf_counter()
    made, total = 0, 0
    workers = min(os.cpu_count() or 1, max(1, n // 8))
    with mp.get_context("spawn").Pool(workers) as pool:
        for size in pool.imap_unordered(_make_jpeg, jobs, chunksize=16):
            made, total = made + 1, total + size
            if time.perf_counter() - t0 > cap:
                break
        pool.terminate()
    return {
        "asked": n,
        "made": made,
        "mean_kib": round(total / max(1, made) / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
    }


def jpeg_paths(folder: Path) -> list[Path]:
    """The complete JPEGs (a stopped generation can leave a partial last file per worker: dropped)."""
    from PIL import Image

    out = []
    for p in sorted(folder.rglob("*.jpg")):
        try:
            with Image.open(p) as im:
                im.verify()
            out.append(p)
        except Exception:
            p.unlink(missing_ok=True)
    return out


def make_model(model_dir: Path, fit_images: int = 0) -> Path:
    """An untrained model of the default ModelConfig (indexing and query speed do not depend on the
    weights); with `fit_images`, its default search vector (the pooling and centring a trained model
    gets, VLAD for this configuration) fitted on that many generated JPEGs, so every part measures the
    vector users get. Without, the model's own (mean-pooled) vector."""
    from encoder import ModelConfig, create_model, save_model

    save_model(create_model(ModelConfig()), model_dir, {"note": "untrained, for bench/gpu_bench.py"})
    if fit_images:
        from encoder.decoding import decode_to_array
        from encoder.search_vector import refit_search_vector

        fit = model_dir / "fit-jpegs"
        fit.mkdir()
        paths = [fit / f"{i}.jpg" for i in range(fit_images)]
        for i, p in enumerate(paths):
            _make_jpeg((str(p), 10**6 + i))  # seeds apart from the measured folder's
        pixels, _, _ = decode_to_array(paths, ModelConfig().image_size)
        refit_search_vector(model_dir, pixels, pooling="auto")
        shutil.rmtree(fit)
    return model_dir
