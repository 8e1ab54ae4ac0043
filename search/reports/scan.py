"""One decoding pass over every distinct indexed image, for what vectors cannot tell:
the autoencoder's reconstruction error (the outlier score) and a perceptual hash (the
near-duplicate check that complements the vectors).

The catalog keeps no pixels, so images are decoded again, in parallel and in
batches. Results are cached in ``report_cache.sqlite`` in the index directory, keyed by
(content hash, model id): a second report, or the HTTP endpoint, decodes only what is
new. A read-only index still works; results are then not kept.

The outlier rule over the scores is :mod:`search.reports.outliers`.

Perceptual hash: the DCT hash of Zauner (as in the `imagehash` package's ``phash``):
greyscale, resized to 32x32 (Lanczos), 2-D DCT-II, the 8x8 lowest frequencies, one bit
per coefficient above their median. Computed from the same letterboxed pixels the model
sees, so one decode serves both.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from encoder.decoding import decode_batches, default_workers
from indexer import ImageRecord
from indexer.catalog import STATUS_OK, in_chunks
from indexer.layout import REPORT_CACHE

from ..engine import Engine

log = logging.getLogger(__name__)

CACHE_FILE = REPORT_CACHE
#: Outlier rule: robust z-score of log(reconstruction error) above this.
NO_HASH = -1  # a perceptual hash that could not be computed (never equal to a real one here)

_N = 32
_DCT = np.cos(np.pi * np.arange(_N)[:, None] * (2 * np.arange(_N)[None, :] + 1) / (2 * _N))  # DCT-II rows
_POPCOUNT = np.array([bin(x).count("1") for x in range(256)], dtype=np.uint8)


#: A perceptual-hash match is evidence of "the same picture" only when it is far closer
#: than unrelated images of the same collection usually are. On low-detail images (digits,
#: icons, line art) many unrelated pictures share nearly the same hash: on 10,000 MNIST
#: digits, hash distance <= 8 chained 7,251 different digits into one "near-duplicate"
#: group. So the tiers' hash distances are capped per collection at the 1st percentile of
#: unrelated pairs' distances less this margin (docs/benchmarks.md, "Reports"): Tux Paint's
#: 1st percentile is 20 (cap 8, the tiers unchanged), MNIST's 12 (cap 0). For hashes of
#: unrelated natural images (about Binomial(64, 1/2)) the 1st percentile is ~22.
#:
#: "Unrelated" is judged by the vectors: only random pairs in the less similar half by cosine
#: are sampled. Without that, a folder where duplicates are common (10 copies of each photo)
#: has duplicates among its random pairs, their small distances set the cap, and the hashes
#: are switched off exactly where they are needed; excluding only the pairs the vectors call
#: alike is not enough, because edits the vectors miss (brightness, greyscale) are the ones
#: the hash is there to catch. Below-median pairs are unrelated in any collection where
#: duplicates are less than half of all pairs, and on low-detail images (digits) they still
#: show how alike unrelated images hash.
HASH_MARGIN = 12
HASH_SAMPLE_PAIRS = 200_000
HASH_MIN_IMAGES = 50  # fewer: too few pairs to judge the collection; the tiers are kept as they are


def hash_distance_limit(
    codes: np.ndarray,
    *,
    vectors: np.ndarray | None = None,
    pairs: int = HASH_SAMPLE_PAIRS,
    seed: int = 0,
) -> int | None:
    """The largest hash distance still trusted in this collection (negative: none is), from
    random pairs of `codes`; None when there are too few hashes to say.

    With `vectors` (unit rows, one per code), only the random pairs in the less similar half
    by cosine count as unrelated: the others may be duplicates."""
    codes = np.asarray(codes, np.int64)
    valid = np.flatnonzero(codes != NO_HASH)
    if len(valid) < HASH_MIN_IMAGES:
        return None
    rng = np.random.default_rng(seed)
    a, b = rng.choice(valid, pairs), rng.choice(valid, pairs)
    a, b = a[a != b], b[a != b]
    if vectors is not None:
        cosine = np.einsum("nd,nd->n", vectors[a], vectors[b])
        unrelated = cosine < np.median(cosine)
        a, b = a[unrelated], b[unrelated]
    d = hamming(codes[a], codes[b])
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
        for part in in_chunks(hashes):
            chunk = list(part)
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
        files = [engine.root / p for _, p, _ in todo]
        for batch in decode_batches(files, enc.image_size, batch_size, workers=workers, max_pixels=engine.max_pixels):
            good = [d for d in batch if d.pixels is not None]
            if good:
                pixels = np.stack([d.pixels for d in good])
                errs, hashes = enc.reconstruction_error(pixels), perceptual_hash(pixels)
                fresh.update({todo[d.index][0]: (float(e), int(h)) for d, e, h in zip(good, errs, hashes, strict=True)})
            failed.extend(
                {"id": todo[d.index][0], "path": todo[d.index][1], "reason": d.error} for d in batch if d.pixels is None
            )
            store.put(enc.model_id, {todo[d.index][2]: fresh[todo[d.index][0]] for d in good if todo[d.index][2]})
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
