"""Scores of one method's search vectors: precision@1, precision@k and mAP@k by label, near-duplicate recall@1.

The definitions are in the package docstring (``search.evaluation``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from encoder import load_image, open_image

K = 10
NEAR_DUPLICATE_TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "flip")

Embedder = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 -> (N, D) float32


# ---------------------------------------------------------------- retrieval by label


def nearest_neighbours(vectors: np.ndarray, k: int = K, *, queries: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k most cosine-similar rows of `vectors` for each query, best first.

    Without `queries`, every row is a query and is excluded from its own neighbours.
    """
    v = _unit(vectors)
    q = v if queries is None else _unit(queries)
    exclude_self = queries is None
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), 1024):
        sim = q[s : s + 1024] @ v.T  # (b, N)
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        kk = min(k, sim.shape[1] - 1) if exclude_self else min(k, sim.shape[1])
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        out[s : s + len(sim), :kk] = np.take_along_axis(top, order, axis=1)
        out[s : s + len(sim), kk:] = -1
    return out


def retrieval_metrics(vectors: np.ndarray, labels: Sequence[str], k: int = K) -> dict[str, float]:
    """precision@1, precision@k and mAP@k over queries whose label has another member."""
    lab = np.asarray(labels)
    _, ids = np.unique(lab, return_inverse=True)
    counts = np.bincount(ids)
    relevant_total = counts[ids] - 1  # other images with the same label
    queries = np.flatnonzero(relevant_total > 0)
    nn = nearest_neighbours(vectors, k)[queries]
    rel = (ids[nn] == ids[queries, None]) & (nn >= 0)  # (Q, k)
    hits = np.cumsum(rel, axis=1)
    precision_at_i = hits / np.arange(1, k + 1)
    ap = (precision_at_i * rel).sum(axis=1) / np.minimum(k, relevant_total[queries])
    return {
        "precision_at_1": float(rel[:, 0].mean()),
        f"precision_at_{k}": float(rel.mean()),
        f"map_at_{k}": float(ap.mean()),
        "queries": int(len(queries)),
    }


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- near-duplicates


def near_duplicate_bytes(path: Path, transform: str, rng: np.random.Generator) -> bytes:
    """The file at `path`, altered the way a copy of it found elsewhere might be, as image bytes."""
    img, _ = open_image(path)
    fmt = "PNG"
    if transform == "resize":
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BILINEAR)
    elif transform == "jpeg":
        fmt = "JPEG"
    elif transform == "crop":
        # Remove 10% of width and height, split at random between the two sides.
        dw, dh = round(img.width * 0.1), round(img.height * 0.1)
        left, top = int(rng.integers(0, dw + 1)), int(rng.integers(0, dh + 1))
        img = img.crop((left, top, img.width - (dw - left), img.height - (dh - top)))
    elif transform == "brightness":
        img = ImageEnhance.Brightness(img).enhance(1.3)
    elif transform == "flip":
        img = ImageOps.mirror(img)
    else:
        raise ValueError(f"unknown near-duplicate transform {transform!r}")
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 60} if fmt == "JPEG" else {}))
    return buf.getvalue()


def near_duplicate_queries(
    paths: Sequence[Path], sizes: Sequence[int], n: int, seed: int
) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """Pick up to `n` images; return their indices and, per transform and size, the altered pixels."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(paths), min(n, len(paths)), replace=False))
    out: dict[str, dict[int, np.ndarray]] = {}
    for t in NEAR_DUPLICATE_TRANSFORMS:
        data = [near_duplicate_bytes(paths[i], t, rng) for i in pick]
        out[t] = {s: np.stack([load_image(d, s) for d in data]) for s in sizes}
    return pick, out


def near_duplicate_recall(
    embed: Embedder, gallery: np.ndarray, pick: np.ndarray, altered: dict[str, np.ndarray]
) -> dict[str, float]:
    """Recall@1 per transform (and their mean) of altered copies against the gallery vectors."""
    out = {}
    for t, pixels in altered.items():
        nn = nearest_neighbours(gallery, 1, queries=embed(pixels))[:, 0]
        out[t] = float((nn == pick).mean())
    out["mean"] = float(np.mean(list(out.values())))
    return out
