"""bench/gpu_bench.py's part 3: query latency, p50/p99: embedding one uploaded JPEG, and a faiss search.

Top-level imports stay light (stdlib only; faiss is imported where it is used): bench/gpu_bench.py
imports this module on machines without faiss, and its spawned workers re-import that file.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from gpu_corpus import HEIGHT, WIDTH

FAISS_VECTORS = 100_000


def percentiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, round(p * (len(s) - 1)))], 3)

    return {"n": len(s), "p50_ms": q(0.50), "p99_ms": q(0.99), "mean_ms": round(statistics.fmean(s), 3)}


def query_embed(model_dir: Path, device: Any, jpeg: bytes, n: int, cap: float) -> dict[str, Any]:
    """Encoder.embed of one uploaded image (bytes), as the search API does: p50/p99 over `n` queries."""
    import torch

    from encoder import Encoder

    enc = Encoder(model_dir, str(device))  # as the server loads it (bf16 autocast, channels-last on CUDA)
    cuda = device.type == "cuda"
    for _ in range(5):
        enc.embed([jpeg])
    ms: list[float] = []
    t_end = time.perf_counter() + cap
    for _ in range(n):
        t0 = time.perf_counter()
        enc.embed([jpeg])  # .cpu() at its end waits for the GPU
        ms.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > t_end:
            break
    if cuda:
        torch.cuda.synchronize()
    return {
        "status": "ok",
        "what": f"Encoder.embed([bytes]) of one {WIDTH}x{HEIGHT} JPEG: decode + letterbox on the CPU, model on "
        f"{device.type}" + (" in bf16 autocast, channels-last" if cuda else ""),
        "jpeg_bytes": len(jpeg),
        **percentiles(ms),
    }


def query_faiss(dim: int, n_vectors: int, n: int, cap: float) -> dict[str, Any]:
    """faiss IndexFlatIP over `n_vectors` random unit vectors: one query, k=10, p50/p99."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n_vectors, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(xb)
    qs = rng.standard_normal((n + 5, dim), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    for i in range(5):
        index.search(qs[i : i + 1], 10)
    ms: list[float] = []
    t_end = time.perf_counter() + cap
    for i in range(5, n + 5):
        t0 = time.perf_counter()
        index.search(qs[i : i + 1], 10)
        ms.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > t_end:
            break
    return {
        "status": "ok",
        "what": f"faiss IndexFlatIP, {n_vectors:,} x {dim} float32, one query, k=10, CPU",
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "vectors": n_vectors,
        "dim": dim,
        **percentiles(ms),
    }
