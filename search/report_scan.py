"""One decoding pass over every distinct indexed image, for what vectors cannot tell:
the autoencoder's reconstruction error (the outlier score) and a perceptual hash (the
near-duplicate check that complements the vectors).

The catalog keeps no pixels, so images are decoded again, in parallel and in
batches. Results are cached in ``report_cache.sqlite`` in the index directory, keyed by
(content hash, model id): a second report, or the HTTP endpoint, decodes only what is
new. A read-only index still works; results are then not kept.

Outlier rule: robust z-score of log(score), z = 0.6745 (x - median) / MAD (Iglewicz and
Hoaglin), above :data:`OUTLIER_Z`. The log because errors are skewed: a few images
reconstruct much worse than the rest, none much better.

Perceptual hash: the DCT hash of Zauner (as in the `imagehash` package's ``phash``):
greyscale, resized to 32x32 (Lanczos), 2-D DCT-II, the 8x8 lowest frequencies, one bit
per coefficient above their median. Computed from the same letterboxed pixels the model
sees, so one decode serves both.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from encoder.decoding import decode_many, default_workers
from indexer import ImageRecord
from indexer.catalog import STATUS_OK

from .engine import Engine

log = logging.getLogger(__name__)

CACHE_FILE = "report_cache.sqlite"
#: Outlier rule: robust z-score of log(reconstruction error) above this.
OUTLIER_Z = 3.5
NO_HASH = -1  # a perceptual hash that could not be computed (never equal to a real one here)

_N = 32
_DCT = np.cos(np.pi * np.arange(_N)[:, None] * (2 * np.arange(_N)[None, :] + 1) / (2 * _N))  # DCT-II rows
_POPCOUNT = np.array([bin(x).count("1") for x in range(256)], dtype=np.uint8)


#: A perceptual-hash match is evidence of "the same picture" only when it is far closer
#: than unrelated images of the same collection usually are. On low-detail images (digits,
#: icons, line art) many unrelated pictures share nearly the same hash: on 10,000 MNIST
#: digits, hash distance <= 8 chained 7,251 different digits into one "near-duplicate"
#: group. So the tiers' hash distances are capped per collection at the 1st percentile of
#: random pairs' distances less this margin (docs/benchmarks.md, "Reports"): Tux Paint's
#: 1st percentile is 20 (cap 8, the tiers unchanged), MNIST's 12 (cap 0). For hashes of
#: unrelated natural images (about Binomial(64, 1/2)) the 1st percentile is ~22.
HASH_MARGIN = 12
HASH_SAMPLE_PAIRS = 200_000
HASH_MIN_IMAGES = 50  # fewer: too few pairs to judge the collection; the tiers are kept as they are


def hash_distance_limit(codes: np.ndarray, *, pairs: int = HASH_SAMPLE_PAIRS, seed: int = 0) -> int | None:
    """The largest hash distance still trusted in this collection (negative: none is), from
    random pairs of `codes`; None when there are too few hashes to say."""
    valid = np.asarray(codes, np.int64)
    valid = valid[valid != NO_HASH]
    if len(valid) < HASH_MIN_IMAGES:
        return None
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(valid), pairs), rng.integers(0, len(valid), pairs)
    d = hamming(valid[a[a != b]], valid[b[a != b]])
    return int(np.percentile(d, 1)) - HASH_MARGIN


def perceptual_hash(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N,) int64: 64-bit DCT perceptual hashes (bit 63 first)."""
    out = np.empty(len(pixels), dtype=">u8")
    for n, p in enumerate(pixels):
        grey = Image.fromarray(np.ascontiguousarray(p)).convert("L").resize((_N, _N), Image.Resampling.LANCZOS)
        low = (_DCT @ np.asarray(grey, dtype=np.float64) @ _DCT.T)[:8, :8]
        out[n] = np.packbits(low.flatten() > np.median(low)).view(">u8")[0]
    return out.astype(np.uint64).view(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between two arrays of 64-bit hashes; 255 where either is missing."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    d = _POPCOUNT[(a ^ b).view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.int64).astype(np.int16)
    d[(a == NO_HASH) | (b == NO_HASH)] = 255
    return d


class ScanCache:
    """(content hash, model id) -> (score, perceptual hash), in a small SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.conn: sqlite3.Connection | None = None
        try:
            self.conn = sqlite3.connect(path, timeout=10)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS scan (content_hash TEXT NOT NULL, model_id TEXT NOT NULL, "
                "score REAL NOT NULL, phash INTEGER NOT NULL, PRIMARY KEY (content_hash, model_id))"
            )
            self.conn.commit()
        except sqlite3.Error as exc:
            log.debug("scan cache unavailable (%s): results are not kept", exc)
            self.conn = None

    def get(self, model_id: str, hashes: Sequence[str]) -> dict[str, tuple[float, int]]:
        out: dict[str, tuple[float, int]] = {}
        if self.conn is None:
            return out
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            q = f"SELECT content_hash, score, phash FROM scan WHERE model_id = ? AND content_hash IN ({marks})"
            out.update({h: (s, p) for h, s, p in self.conn.execute(q, [model_id, *chunk])})
        return out

    def put(self, model_id: str, rows: dict[str, tuple[float, int]]) -> None:
        if self.conn is None or not rows:
            return
        try:
            self.conn.executemany(
                "INSERT OR REPLACE INTO scan VALUES (?, ?, ?, ?)", [(h, model_id, s, p) for h, (s, p) in rows.items()]
            )
            self.conn.commit()
        except sqlite3.Error as exc:
            log.debug("scan results not cached: %s", exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Scan:
    """Per distinct image (ids sorted): reconstruction error and perceptual hash; what failed."""

    ids: np.ndarray
    scores: np.ndarray
    phashes: np.ndarray
    failed: list[dict] = field(default_factory=list)
    model_id: str | None = None


def scan_images(engine: Engine, *, workers: int | None = None, batch_size: int = 256, cache: bool = True) -> Scan:
    """Score and hash every indexed image that is not a byte-identical copy of another."""
    with engine.catalog.session() as s:
        q = select(ImageRecord.id, ImageRecord.path, ImageRecord.content_hash).where(
            ImageRecord.status == STATUS_OK, ImageRecord.duplicate_of.is_(None)
        )
        rows = s.execute(q.order_by(ImageRecord.id)).all()
    enc = engine.snapshot().encoder
    store = ScanCache(engine.index_dir / CACHE_FILE if cache else ":memory:")
    fresh: dict[int, tuple[float, int]] = {}
    failed: list[dict] = []
    try:
        known = store.get(enc.model_id, [h for _, _, h in rows if h])
        todo = [r for r in rows if r[2] not in known]
        workers = workers if workers is not None else (1 if len(todo) < 64 else default_workers())
        batch: list = []

        def flush() -> None:
            good = [d for d in batch if d.pixels is not None]
            if good:
                pixels = np.stack([d.pixels for d in good])
                errs, hashes = enc.reconstruction_error(pixels), perceptual_hash(pixels)
                fresh.update({todo[d.index][0]: (float(e), int(h)) for d, e, h in zip(good, errs, hashes, strict=True)})
            failed.extend({"id": todo[d.index][0], "path": todo[d.index][1], "reason": d.error}
                          for d in batch if d.pixels is None)  # fmt: skip
            store.put(enc.model_id, {todo[d.index][2]: fresh[todo[d.index][0]] for d in good if todo[d.index][2]})
            batch.clear()

        files = [engine.root / p for _, p, _ in todo]
        for d in decode_many(files, enc.image_size, workers=workers, max_pixels=engine.max_pixels):
            batch.append(d)
            if len(batch) >= batch_size:
                flush()
        flush()
    finally:
        store.close()
    got = [(i, known[h] if h in known else fresh[i]) for i, _, h in rows if h in known or i in fresh]
    return Scan(
        np.array([i for i, _ in got], dtype=np.int64),
        np.array([v[0] for _, v in got], dtype=np.float64),
        np.array([v[1] for _, v in got], dtype=np.int64),
        failed,
        enc.model_id,
    )


def _paths(engine: Engine, ids: Iterable[int]) -> dict[int, str]:
    ids = [int(i) for i in ids]
    out: dict[int, str] = {}
    with engine.catalog.session() as s:
        for start in range(0, len(ids), 500):
            q = select(ImageRecord.id, ImageRecord.path).where(ImageRecord.id.in_(ids[start : start + 500]))
            out.update(dict(s.execute(q).all()))
    return out


@dataclass
class Outlier:
    id: int
    path: str
    score: float
    z: float
    flagged: bool

    def as_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": float(f"{self.score:.6g}"), "z": round(self.z, 3),
                "flagged": self.flagged}  # fmt: skip


@dataclass
class Outliers:
    """Outlier scores of every distinct image: the worst `top`, the rule, and a histogram."""

    count: int
    median: float
    mad: float
    threshold_z: float
    threshold_score: float
    flagged: int
    histogram_edges: list[float]
    histogram_counts: list[int]
    top: list[Outlier]
    failed: list[dict]
    model_id: str | None = None

    def header(self) -> dict:
        return {
            "count": self.count,
            "model_id": self.model_id,
            "rule": {
                "statistic": "robust z-score of log(reconstruction error): 0.6745 * (log s - median) / MAD",
                "threshold_z": self.threshold_z,
                "threshold_score": float(f"{self.threshold_score:.6g}"),
                "median_log_score": round(self.median, 6),
                "mad_log_score": round(self.mad, 6),
            },
            "flagged": self.flagged,
            "histogram": {"edges": [float(f"{e:.6g}") for e in self.histogram_edges], "counts": self.histogram_counts},
            "failed": self.failed,
        }


def robust_z(scores: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(z, median, MAD) of log(scores): z = 0.6745 (x - median) / MAD."""
    x = np.log(np.maximum(scores, 1e-12))
    med = float(np.median(x)) if len(x) else 0.0
    mad = float(np.median(np.abs(x - med))) if len(x) else 0.0
    if mad <= 1e-12:  # half the scores equal: fall back to the mean absolute deviation
        mad = float(np.mean(np.abs(x - med))) / 0.7979 * 0.6745 if len(x) else 0.0
    z = 0.6745 * (x - med) / mad if mad > 1e-12 else np.zeros_like(x)
    return z, med, mad


def outliers(
    engine: Engine,
    top: int = 20,
    *,
    offset: int = 0,
    bins: int = 40,
    scan: Scan | None = None,
    **kw,
) -> Outliers:
    """The worst-reconstructed images (`offset`..`offset+top`), the robust-z rule and a
    histogram of all scores. `scan`: the result of :func:`scan_images`, if at hand."""
    scan = scan if scan is not None else scan_images(engine, **kw)
    ids, scores, failed = scan.ids, scan.scores, scan.failed
    z, med, mad = robust_z(scores)
    threshold_score = math.exp(med + OUTLIER_Z * mad / 0.6745) if mad > 0 else float("inf")
    if len(scores):
        logs = np.log10(np.maximum(scores, 1e-12))
        counts, edges = np.histogram(logs, bins=bins)
        edges = 10.0**edges
    else:
        counts, edges = np.zeros(0, int), np.zeros(0)
    order = np.argsort(-scores, kind="stable")[offset : offset + max(0, top)]
    paths = _paths(engine, ids[order])
    worst = [
        Outlier(int(ids[o]), paths[int(ids[o])], float(scores[o]), float(z[o]), bool(z[o] > OUTLIER_Z))
        for o in order
        if int(ids[o]) in paths
    ]
    return Outliers(len(scores), med, mad, OUTLIER_Z, threshold_score, int((z > OUTLIER_Z).sum()),
                    edges.tolist(), counts.tolist(), worst, failed, engine.snapshot().manifest.model_id)  # fmt: skip
