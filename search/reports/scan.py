"""One decoding pass over every distinct indexed image, for what vectors cannot tell:
the autoencoder's reconstruction error (the outlier score), a perceptual hash and crop
hashes (the near-duplicate checks that complement the vectors) and a detail thumbnail.

The catalog keeps no pixels, so images are decoded again, in parallel and in
batches. Results are cached in ``report_cache.sqlite`` in the index directory, keyed by
(content hash, model id): a second report, or the HTTP endpoint, decodes only what is
new. A read-only index still works; results are then not kept.

The outlier rule over the scores is :mod:`search.reports.outliers`.

Perceptual hash: the DCT hash of Zauner (as in the `imagehash` package's ``phash``):
greyscale, resized to 32x32 (Lanczos), 2-D DCT-II, the 8x8 lowest frequencies, one bit
per coefficient above their median. Computed from the same letterboxed pixels the model
sees, so one decode serves both.

Crop hashes: the same hash of the picture itself (the letterbox padding left out) and of
nine windows of it, each :data:`WINDOW` of its width and height, at the corners, edge
middles and centre. A copy cut down by 5-15% at any place is close to one of the
original's windows (:func:`crop_distance`): on the cross-corpus benchmark's crops of
8-10%, 96% of (original, crop) pairs are within 8 bits this way and 9-35% by the whole
hash (docs/benchmarks.md, "Near-duplicates across corpora").

Detail thumbnails: the picture (padding left out) in grey, averaged down to 16x16
(:func:`.detail.detail_thumbnails`, 256 bytes an image). A pair that the whole-picture hash
admits must also agree in this finer detail (:mod:`.detail`): stamps drawn as variants of one
another (a dreidel with another letter) hash within 2-6 bits of each other.

Copy vectors: when the search vector is VLAD, the model's own vector too
(:meth:`encoder.Encoder.copy_vectors`), which the near-duplicate report compares instead (copies of
one picture keep it far better than VLAD).

The cache table is ``scan_v4``; a cache written before copy vectors (``scan_v3``) or thumbnails
(``scan_v2``) existed is ignored and its images scanned again.

Mirror images are left out on purpose: a mirror hash (the same DCT, odd horizontal
frequencies negated) lifted mirror recall from 0.08 to 0.47-0.58 on that benchmark but
lowered core-edit recall by 0.01-0.02, because groups never chain: a mirrored copy and a
cropped one of the same picture do not match each other, and whichever joins first keeps
the other out.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from encoder.decoding import decode_batches, default_workers
from encoder.images import letterbox_box
from indexer import ImageRecord
from indexer.catalog import STATUS_OK, in_chunks
from indexer.layout import REPORT_CACHE

from ..engine import Engine
from .detail import SIDE as DETAIL_SIDE
from .detail import detail_thumbnails

log = logging.getLogger(__name__)

CACHE_FILE = REPORT_CACHE
#: Outlier rule: robust z-score of log(reconstruction error) above this.
NO_HASH = -1  # a perceptual hash that could not be computed (never equal to a real one here)

_N = 32
#: Crop hashes: the share of the picture's width and height each window keeps, and where
#: the windows sit (fractions of the room left: left/top, middle, right/bottom).
WINDOW = 0.91
_WINDOW_AT = (0.0, 0.5, 1.0)
#: Columns of a crop-hash row: the whole picture, then the windows.
CROP_HASHES = 1 + len(_WINDOW_AT) ** 2
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
#: "Unrelated" leaves out the random pairs either hash puts within :data:`CANDIDATE_BITS`:
#: in a folder where duplicates are common (10 copies of each photo) they are copies, and
#: their small distances set the cap, switching the hashes off exactly where they are needed.
#: Excluding only the pairs the vectors call alike (the less similar half by cosine, the rule
#: before) was not enough: the edits the vectors miss (greyscale) are the ones the hash is
#: there to catch. The vectors still decide whether the hashes can be used at all
#: (:data:`CANDIDATE_SHARE`).
HASH_MARGIN = 12
#: The same margin for crop distances (:func:`crop_distance`), whose unrelated pairs spread
#: less: the best of 18 overlapping windows moves the 1st percentile down ~4 bits and the
#: tail below it is steeper. Tuned on the Tux Paint edits alone (the cap 4 bits there let
#: 3 unrelated candidate pairs in and caught 55% of crop pairs, the cap 6 19 and 79%, the cap
#: 8 53 and 88%) and reported on the other corpora (docs/benchmarks.md, "Near-duplicates
#: across corpora").
CROP_HASH_MARGIN = 10
HASH_SAMPLE_PAIRS = 200_000
#: The loosest hash distance any default tier admits (:data:`search.reports.duplicates.TIERS`):
#: random pairs within it by either hash are candidate copies, left out of the unrelated pairs
#: the caps are judged on (:func:`hash_distance_limit`).
CANDIDATE_BITS = 10
#: ... unless more than this share of the pairs the vectors call unrelated are such candidates:
#: the share a cap at the 1st percentile tolerates. Measured on the cross-corpus benchmark
#: (three seeds): 0.01-0.03% on Tux Paint edits, 0.3-0.5% on the wallpapers and on a folder with
#: ten copies of each photo, 0.6-0.7% on MNIST digits (whose caps stay off anyway).
CANDIDATE_SHARE = 0.01
HASH_MIN_IMAGES = 50  # fewer: too few pairs to judge the collection; the tiers are kept as they are


def hash_distance_limit(
    codes: np.ndarray,
    *,
    vectors: np.ndarray | None = None,
    pairs: int = HASH_SAMPLE_PAIRS,
    seed: int = 0,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    margin: int | None = None,
    also: tuple[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    candidate: int = CANDIDATE_BITS,
) -> int | None:
    """The largest hash distance still trusted in this collection (negative: none is), from
    random pairs of `codes`; None when there are too few hashes to say.

    `codes`: (n,) hashes, or (n, m) rows of them with `distance` the distance between rows
    (:func:`crop_distance` for crop hashes); the default is :func:`hamming`. `also`: the
    other hash of the same images and its distance (the crop hashes, when `codes` are the
    whole-picture ones, and the other way round).

    Two questions, answered on the same random pairs:

    - *Can these hashes tell pictures apart at all?* Not when more than
      :data:`CANDIDATE_SHARE` of the pairs the vectors call unrelated (the less similar half by
      cosine; every pair without `vectors`) hash within `candidate` bits, by either hash:
      then a cap would admit unrelated-looking pairs wholesale (a folder of blank icons).
    - *How close do unrelated pictures come?* The 1st percentile of the pairs *neither* hash
      puts within `candidate` bits, less `margin` (default :data:`HASH_MARGIN`). The pairs
      left out are candidate copies, not evidence of how unrelated pictures hash: in a folder
      with ten copies of each photo they are 4% of random pairs, and the ones the vectors miss
      (greyscale copies) sat in the less similar half and pulled the crop cap there from 6 bits
      to 2 (docs/benchmarks.md, "Near-duplicates across corpora"). A collection whose unrelated
      pictures really do hash close (digits) has a continuous tail beyond `candidate` bits, so
      leaving the candidates out does not lift its cap over the floor."""
    codes = np.asarray(codes, np.int64)
    distance = distance or hamming
    valid = np.flatnonzero(codes != NO_HASH if codes.ndim == 1 else codes[:, 0] != NO_HASH)
    if len(valid) < HASH_MIN_IMAGES:
        return None
    margin = HASH_MARGIN if margin is None else margin
    rng = np.random.default_rng(seed)
    a, b = rng.choice(valid, pairs), rng.choice(valid, pairs)
    a, b = a[a != b], b[a != b]
    d = distance(codes[a], codes[b])
    close = d <= candidate
    if also is not None:
        other, other_distance = also
        other = np.asarray(other, np.int64)
        close |= other_distance(other[a], other[b]) <= candidate
    unrelated = np.ones(len(a), dtype=bool)
    if vectors is not None:
        cosine = np.einsum("nd,nd->n", vectors[a], vectors[b])
        unrelated = cosine < np.median(cosine)
    if close[unrelated].mean() > CANDIDATE_SHARE or close.all():
        return -1 - margin
    return int(np.percentile(d[~close], 1)) - margin


def perceptual_hash(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N,) int64: 64-bit DCT perceptual hashes (bit 63 first)."""
    grey = [
        np.asarray(Image.fromarray(np.ascontiguousarray(p)).convert("L").resize((_N, _N), Image.Resampling.LANCZOS))
        for p in pixels
    ]
    return _dct_hash(np.stack(grey).astype(np.float64) if grey else np.empty((0, _N, _N)))


def _dct_low(grey: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grey levels -> (N, 8, 8): the lowest frequencies of their 2-D DCT-II."""
    return np.einsum("ij,njk,lk->nil", _DCT[:8], grey, _DCT[:8])


def _bits(low: np.ndarray) -> np.ndarray:
    """(N, 8, 8) DCT coefficients -> (N,) int64 hashes: each coefficient against their median."""
    low = low.reshape(len(low), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64).view(np.int64)


def _dct_hash(grey: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grey levels -> (N,) int64 DCT hashes."""
    return _bits(_dct_low(grey))


def crop_hashes(pixels: np.ndarray, sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """(N, S, S, 3) letterboxed pixels and each image's (width, height) -> (N, CROP_HASHES)
    int64: the DCT hash of the picture without its letterbox padding, then of its windows."""
    grey: list[np.ndarray] = []
    for p, (w, h) in zip(pixels, sizes, strict=True):
        x0, y0, x1, y1 = letterbox_box(w, h, p.shape[0])
        nw, nh = x1 - x0, y1 - y0
        img = Image.fromarray(np.ascontiguousarray(p)).convert("L")
        boxes = [(x0, y0, x1, y1)]
        cw, ch = nw * WINDOW, nh * WINDOW
        boxes += [
            (x0 + fx * (nw - cw), y0 + fy * (nh - ch), x0 + fx * (nw - cw) + cw, y0 + fy * (nh - ch) + ch)
            for fy in _WINDOW_AT
            for fx in _WINDOW_AT
        ]
        grey += [np.asarray(img.resize((_N, _N), Image.Resampling.LANCZOS, box=b), dtype=np.float64) for b in boxes]
    if not grey:
        return np.empty((0, CROP_HASHES), dtype=np.int64)
    return _dct_hash(np.stack(grey)).reshape(len(pixels), CROP_HASHES)


def crop_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, CROP_HASHES) crop-hash rows of pair ends -> (P,) the fewest bits between one
    picture's whole hash and one of the other's windows, either way round (255 where
    either is missing): small when one is the other cut down a little, anywhere."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    n = len(a)
    if not n or a.ndim != 2 or a.shape[1] != CROP_HASHES:
        return np.full(n, 255, dtype=np.int16)
    w = CROP_HASHES - 1
    one = hamming(np.repeat(a[:, :1], w, axis=1).ravel(), b[:, 1:].ravel()).reshape(n, w).min(axis=1)
    two = hamming(np.repeat(b[:, :1], w, axis=1).ravel(), a[:, 1:].ravel()).reshape(n, w).min(axis=1)
    return np.minimum(one, two)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between two arrays of 64-bit hashes; 255 where either is missing."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    d = _POPCOUNT[(a ^ b).view(np.uint8).reshape(-1, 8)].sum(axis=1, dtype=np.int64).astype(np.int16)
    d[(a == NO_HASH) | (b == NO_HASH)] = 255
    return d


#: A scan result: (outlier score, perceptual hash, crop hashes, detail thumbnail, copy vector or None).
ScanRow = tuple[float, int, np.ndarray, np.ndarray, np.ndarray | None]


class ScanCache:
    """(content hash, model id) -> (score, perceptual hash, crop hashes, detail thumbnail, copy
    vector), in a small SQLite file. The copy vector is float32 bytes, empty for a model without one.

    The table is versioned by name: a cache written before crop hashes (``scan_v1``), detail
    thumbnails (``scan_v2``) or copy vectors (``scan_v3``) existed is ignored (its images are
    scanned again), never misread."""

    TABLE = "scan_v4"

    def __init__(self, path: Path | str) -> None:
        self.conn: sqlite3.Connection | None = None
        try:
            self.conn = sqlite3.connect(path, timeout=10)
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} (content_hash TEXT NOT NULL, model_id TEXT NOT NULL, "
                "score REAL NOT NULL, phash INTEGER NOT NULL, crops BLOB NOT NULL, detail BLOB NOT NULL, "
                "vector BLOB NOT NULL, "
                "PRIMARY KEY (content_hash, model_id))"
            )
            self.conn.commit()
        except sqlite3.Error as exc:
            log.debug("scan cache unavailable (%s): results are not kept", exc)
            self.conn = None

    def get(self, model_id: str, hashes: Sequence[str], dim: int = 0) -> dict[str, ScanRow]:
        """Rows kept for `hashes`; `dim`: the copy vectors' length (0: the model has none)."""
        out: dict[str, ScanRow] = {}
        if self.conn is None:
            return out
        for part in in_chunks(hashes):
            chunk = list(part)
            marks = ",".join("?" * len(chunk))
            q = (
                f"SELECT content_hash, score, phash, crops, detail, vector FROM {self.TABLE} "
                f"WHERE model_id = ? AND content_hash IN ({marks})"
            )
            for h, s, p, c, t, v in self.conn.execute(q, [model_id, *chunk]):
                crops = np.frombuffer(c, dtype="<i8")
                thumb = np.frombuffer(t, dtype=np.uint8)
                vec = np.frombuffer(v, dtype="<f4")
                if len(crops) == CROP_HASHES and len(thumb) == DETAIL_SIDE**2 and len(vec) == dim:  # else scan again
                    thumb = thumb.reshape(DETAIL_SIDE, DETAIL_SIDE).copy()
                    out[h] = (s, p, crops.astype(np.int64), thumb, vec.astype(np.float32) if dim else None)
        return out

    def put(self, model_id: str, rows: dict[str, ScanRow]) -> None:
        if self.conn is None or not rows:
            return
        try:
            self.conn.executemany(
                f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (h, model_id, s, p, _bytes(c, "<i8"), _bytes(t, np.uint8), b"" if v is None else _bytes(v, "<f4"))
                    for h, (s, p, c, t, v) in rows.items()
                ],
            )
            self.conn.commit()
        except sqlite3.Error as exc:
            log.debug("scan results not cached: %s", exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _bytes(a: np.ndarray, dtype) -> bytes:
    return np.asarray(a, dtype).tobytes()


@dataclass
class Scan:
    """Per distinct image (ids sorted): reconstruction error, perceptual hash, crop hashes
    (:func:`crop_hashes`), detail thumbnail (:func:`.detail.detail_thumbnails`) and copy vector
    (:meth:`encoder.Encoder.copy_vectors`, when the model has them); what failed."""

    ids: np.ndarray
    scores: np.ndarray
    phashes: np.ndarray
    failed: list[dict] = field(default_factory=list)
    model_id: str | None = None
    crops: np.ndarray | None = None  # (n, CROP_HASHES)
    details: np.ndarray | None = None  # (n, DETAIL_SIDE, DETAIL_SIDE) uint8 grey thumbnails
    vectors: np.ndarray | None = None  # (n, D) float32 unit copy vectors; None: the search vectors serve

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(where, found): for each of the catalog `ids`, its row here and whether it has one (an
        image that failed to decode, or was not scanned, has none)."""
        if not len(self.ids):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        where = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        return where, self.ids[where] == ids


def scan_images(engine: Engine, *, workers: int | None = None, batch_size: int = 256, cache: bool = True) -> Scan:
    """Score and hash every indexed image that is not a byte-identical copy of another (and, where
    the model has them, compute its copy vector)."""
    with engine.catalog.session() as s:
        q = select(ImageRecord.id, ImageRecord.path, ImageRecord.content_hash).where(
            ImageRecord.status == STATUS_OK, ImageRecord.duplicate_of.is_(None)
        )
        rows = s.execute(q.order_by(ImageRecord.id)).all()
    enc = engine.snapshot().encoder
    store = ScanCache(engine.index_dir / CACHE_FILE if cache else ":memory:")
    fresh: dict[int, ScanRow] = {}
    failed: list[dict] = []
    try:
        dim = enc.model.embedding_dim if enc.has_copy_vectors else 0
        known = store.get(enc.model_id, [h for _, _, h in rows if h], dim)
        todo = [r for r in rows if r[2] not in known]
        workers = workers if workers is not None else (1 if len(todo) < 64 else default_workers())
        files = [engine.root / p for _, p, _ in todo]
        for batch in decode_batches(files, enc.image_size, batch_size, workers=workers, max_pixels=engine.max_pixels):
            good = [d for d in batch if d.pixels is not None]
            if good:
                pixels = np.stack([d.pixels for d in good])
                errs, hashes = enc.reconstruction_error(pixels), perceptual_hash(pixels)
                sizes = [(d.info.width, d.info.height) if d.info else pixels.shape[2:0:-1] for d in good]
                crops = crop_hashes(pixels, sizes)
                thumbs = detail_thumbnails(pixels, [letterbox_box(w, h, pixels.shape[1]) for w, h in sizes])
                vecs = enc.copy_vectors(pixels) if dim else [None] * len(good)
                fresh.update(
                    {
                        todo[d.index][0]: (float(e), int(h), c, t, v)
                        for d, e, h, c, t, v in zip(good, errs, hashes, crops, thumbs, vecs, strict=True)
                    }
                )
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
        np.array([v[2] for _, v in got], dtype=np.int64).reshape(len(got), CROP_HASHES),
        np.array([v[3] for _, v in got], dtype=np.uint8).reshape(len(got), DETAIL_SIDE, DETAIL_SIDE),
        np.array([v[4] for _, v in got], dtype=np.float32).reshape(len(got), dim) if dim else None,
    )
