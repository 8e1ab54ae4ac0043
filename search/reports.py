"""Batch similarity reports over an index: exact duplicates, near-duplicates in tiers,
neighbours of a set of images, and outliers by reconstruction error.

No web framework here: ``lookalike report``, the ``/reports/...`` HTTP endpoints and
the benchmarks call these functions. The decoding pass (outlier scores, perceptual
hashes) is :mod:`search.report_scan`; writing JSON/CSV/HTML is
:mod:`search.report_formats` and :mod:`search.report_html`.

- **Exact duplicates** come from the catalog: files with the same content hash.
- **Near-duplicates** never build an all-pairs matrix: each image asks for its ``k``
  nearest neighbours (exact kNN in BLAS batches up to :data:`EXACT_MAX` vectors, else
  the index's own HNSW/IVF), so memory grows with n*k. A pair of neighbours joins a
  tier when the cosine of their *whitened* vectors (:func:`whiten`) reaches the tier's
  threshold, or when their perceptual hashes differ in at most the tier's `hamming`
  bits; each tier's groups are the connected components of its pairs. A group is shown
  at the strictest tier at which it holds together; a looser tier shows a group only
  when it adds images. Each group names a keeper (largest resolution, then largest
  file, then lowest id) and lists the others with their similarity to it.
- **Neighbours of a set**: the top-k of each image of a folder (or of indexed ids).
- **Outliers**: see :mod:`search.report_scan`.

Byte-identical copies count once in the near-duplicate and outlier sections (they
are the exact-duplicate section's business). The tiers were calibrated with
``bench/near_duplicates.py`` (docs/benchmarks.md, "Reports") and live in :data:`TIERS`
alone; that script prints suggested values for a new default model.

JSON schema ("lookalike.report/1"): :func:`search.report_formats.write_json`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import func, select

from encoder.decoding import decode_many, default_workers
from encoder.images import find_images
from indexer import ImageRecord
from indexer.build import content_hash
from indexer.catalog import STATUS_OK

from .engine import Engine, EngineError, Hit, NotFound
from .report_pairs import DEFAULT_K, WHITEN_SHRINK, connected_components, similar_pairs, whiten  # noqa: F401
from .report_scan import (  # noqa: F401
    CACHE_FILE,
    OUTLIER_Z,
    Outlier,
    Outliers,
    Scan,
    hamming,
    hash_distance_limit,
    outliers,
    robust_z,
    scan_images,
)

log = logging.getLogger(__name__)

SCHEMA = "lookalike.report/1"
FORMATS = ("html", "json", "csv")


@dataclass(frozen=True)
class Tier:
    """A named band of near-duplicates: pairs of neighbours whose cosine similarity is >=
    `threshold`, or whose perceptual hashes differ in at most `hamming` bits."""

    name: str
    threshold: float
    description: str = ""
    hamming: int | None = None


#: Calibrated with bench/near_duplicates.py on the Tux Paint stamps and generated variants
#: (docs/benchmarks.md, "Reports"): each is the (cosine, Hamming) pair with the best recall
#: at grouped-pair precision >= 0.99, 0.95 and 0.80. Re-run it after changing the default
#: model and copy its suggestions here.
TIERS: tuple[Tier, ...] = (
    Tier("near-identical", 0.97, "the same picture resized or recompressed", hamming=4),
    Tier("near-duplicate", 0.90, "the same picture resized, recompressed, brightened or cropped a little", hamming=8),
    Tier("similar", 0.80, "alike: edits, larger crops, or another picture of the same thing", hamming=10),
)
#: Below this cap (1% of unrelated pairs within 13 bits) a hash says too little to use at all:
#: on MNIST digits the cap is 0 and identical hashes still joined 58 pairs of different digits.
MIN_HASH_LIMIT = 2
#: Up to this many vectors, pairs come from exact kNN (BLAS); above, from the index's HNSW/IVF.
EXACT_MAX = 200_000


class ReportError(EngineError):
    """The report cannot be made as asked (unknown tier, bad format...)."""


def resolve_tiers(spec: str | float | None) -> tuple[Tier, ...]:
    """`None`/"all": every tier; a tier name: the tiers down to that one; a number: the tiers
    at or above it, plus a custom tier at exactly that similarity."""
    if spec is None or spec == "all":
        return TIERS
    names = [t.name for t in TIERS]
    if isinstance(spec, str) and spec in names:
        return TIERS[: names.index(spec) + 1]
    try:
        x = float(spec)
    except (TypeError, ValueError):
        raise ReportError(f"unknown tier {spec!r}: give a similarity in [-1, 1] or one of {', '.join(names)}") from None
    if not -1.0 <= x <= 1.0:
        raise ReportError(f"near-duplicate threshold {x} is not a cosine similarity in [-1, 1]")
    tiers = [t for t in TIERS if t.threshold >= x]
    if not any(math.isclose(t.threshold, x) for t in tiers):
        tiers.append(Tier(f"sim>={x:g}", x, "custom threshold"))
    return tuple(tiers)


# ---------------------------------------------------------------- results


@dataclass
class Member:
    """One image of a group. `similarity`: cosine to the group's keeper (1.0 for the keeper)."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int | None
    similarity: float | None = None
    hamming: int | None = None  # perceptual-hash bits that differ from the keeper's, when hashed

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["similarity"] is not None:
            d["similarity"] = round(d["similarity"], 6)
        return d


@dataclass
class Group:
    """Images that belong together: the suggested keeper and the others."""

    tier: str
    keeper: Member
    others: list[Member]
    key: str | None = None  # the content hash, for exact duplicates

    @property
    def members(self) -> list[Member]:
        return [self.keeper, *self.others]

    @property
    def min_similarity(self) -> float | None:
        sims = [m.similarity for m in self.others if m.similarity is not None]
        return min(sims) if sims else None

    def as_dict(self) -> dict:
        d = {"tier": self.tier, "size": 1 + len(self.others), "keeper": self.keeper.as_dict(),
             "others": [m.as_dict() for m in self.others]}  # fmt: skip
        if self.key is not None:
            d["content_hash"] = self.key
        else:
            ms = self.min_similarity
            d["min_similarity"] = None if ms is None else round(ms, 6)
        return d


@dataclass
class NearDuplicates:
    """Near-duplicate groups per tier (strictest first), and how they were found."""

    tiers: tuple[Tier, ...]
    groups: dict[str, list[Group]]
    k: int
    method: str
    vectors: int
    pairs: int
    seconds: float
    similarity: str = "cosine of the whitened search vectors"

    def header(self) -> dict:
        return {"similarity": self.similarity, "k": self.k, "method": self.method, "vectors": self.vectors,
                "pairs": self.pairs, "seconds": round(self.seconds, 3)}  # fmt: skip


@dataclass
class QueryResult:
    """The top-k of one query image. `exact_match_id`: an indexed file with the same bytes."""

    query: dict
    neighbours: list[Hit] = field(default_factory=list)
    exact_match_id: int | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        return {"query": self.query, "exact_match_id": self.exact_match_id, "error": self.error,
                "neighbours": [h.as_dict() for h in self.neighbours]}  # fmt: skip


@dataclass
class Report:
    index: str
    model_id: str | None
    images: int
    generated_at: str
    exact: list[Group] | None = None
    near: NearDuplicates | None = None
    neighbours: list[QueryResult] | None = None
    neighbours_k: int = 0
    outliers: Outliers | None = None


# ---------------------------------------------------------------- catalog helpers


def _members(engine: Engine, ids: Iterable[int]) -> dict[int, Member]:
    ids = [int(i) for i in ids]
    out: dict[int, Member] = {}
    cols = (ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height, ImageRecord.size)
    with engine.catalog.session() as s:
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            for i, p, w, h, sz in s.execute(select(*cols).where(ImageRecord.id.in_(ids[start : start + 500]))):
                out[i] = Member(i, p, w, h, sz)
    return out


def _canonical_ids(engine: Engine) -> np.ndarray:
    """Ids of indexed images that are not byte-identical copies of another, sorted."""
    with engine.catalog.session() as s:
        q = select(ImageRecord.id).where(ImageRecord.status == STATUS_OK, ImageRecord.duplicate_of.is_(None))
        return np.fromiter(s.scalars(q), dtype=np.int64)


def _keeper_order(m: Member) -> tuple:
    return (-(m.width or 0) * (m.height or 0), -(m.size or 0), m.id)


# ---------------------------------------------------------------- exact duplicates


def exact_duplicates(engine: Engine) -> list[Group]:
    """Groups of byte-identical indexed files (same content hash), biggest first."""
    with engine.catalog.session() as s:
        ok = ImageRecord.status == STATUS_OK
        dup = select(ImageRecord.content_hash).where(ok, ImageRecord.content_hash.is_not(None))
        dup = dup.group_by(ImageRecord.content_hash).having(func.count(ImageRecord.id) > 1)
        cols = (ImageRecord.content_hash, ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height,
                ImageRecord.size)  # fmt: skip
        rows = s.execute(select(*cols).where(ok, ImageRecord.content_hash.in_(dup)).order_by(ImageRecord.id)).all()
    by_hash: dict[str, list[Member]] = {}
    for h, i, p, w, hh, sz in rows:
        by_hash.setdefault(h, []).append(Member(i, p, w, hh, sz, 1.0))
    groups = [Group("exact", ms[0], ms[1:], key=h) for h, ms in by_hash.items()]  # keeper: the first indexed
    groups.sort(key=lambda g: (-len(g.others), g.keeper.id))
    return groups


# ---------------------------------------------------------------- near-duplicates


def _tier_mask(tier: Tier, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    m = s >= tier.threshold
    if tier.hamming is not None:
        m |= d <= tier.hamming
    return m


def _tier_groups(nodes: int, s: np.ndarray, i: np.ndarray, j: np.ndarray, d: np.ndarray, tiers: Sequence[Tier]):
    """For each tier (strictest first): lists of node arrays, each a group shown at that tier."""
    out: dict[str, list[np.ndarray]] = {}
    previous: np.ndarray | None = None
    for tier in tiers:
        m = _tier_mask(tier, s, d)
        labels = connected_components(nodes, i[m], j[m])
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        groups = [g for g in np.split(order, bounds) if len(g) > 1]
        if previous is not None:  # the same set at a stricter tier is shown there only
            groups = [g for g in groups if len(np.unique(previous[g])) > 1]
        groups.sort(key=lambda g: (-len(g), int(g.min())))
        out[tier.name] = groups
        previous = labels
    return out


def near_duplicates(
    engine: Engine,
    tiers: Sequence[Tier] = TIERS,
    *,
    k: int = DEFAULT_K,
    method: str = "auto",
    whitened: bool = True,
    phash: bool = True,
    scan: Scan | None = None,
    batch_size: int = 8192,
) -> NearDuplicates:
    """Near-duplicate groups of the indexed images, per tier. `method`: auto, exact or index.

    Similarities are cosines of the whitened search vectors (:func:`whiten`), unless
    `whitened` is False (the raw cosine that searches use). With `phash` (and tiers that
    set `hamming`), every image is also decoded once (:func:`scan_images`, cached) and a
    pair of neighbours whose perceptual hashes are that close joins too: the vectors alone
    miss brightness changes that the hash sees (docs/benchmarks.md, "Reports")."""
    t0 = time.perf_counter()
    tiers = tuple(sorted(tiers, key=lambda t: -t.threshold))
    if not tiers:
        raise ReportError("no near-duplicate tiers asked for")
    snap = engine.snapshot()
    store_ids = faiss.vector_to_array(snap.store.id_map).astype(np.int64)
    flat = faiss.downcast_index(snap.store.index)
    vecs = faiss.rev_swig_ptr(flat.get_xb(), len(store_ids) * flat.d).reshape(len(store_ids), flat.d)
    keep = np.isin(store_ids, _canonical_ids(engine))
    ids, raw = store_ids[keep], np.ascontiguousarray(vecs[keep])
    vecs = whiten(raw) if whitened else raw
    approximate = snap.search is not snap.store and snap.search.ntotal == len(store_ids)
    if method == "auto":
        method = "index" if approximate and len(ids) > EXACT_MAX else "exact"
    if method not in ("exact", "index"):
        raise ReportError(f"unknown method {method!r}: auto, exact or index")
    index = snap.search if method == "index" else None
    if index is not None:
        method = f"index ({snap.manifest.index_type})"
    use_hash = phash and any(t.hamming is not None for t in tiers)
    floor = -1.0 if use_hash else tiers[-1].threshold  # with hashes, every neighbour is a candidate
    i, j, s = similar_pairs(vecs, floor, k, index=index, ids=ids, queries=raw, batch_size=batch_size)
    del raw
    codes = None
    if use_hash:
        scan = scan if scan is not None else scan_images(engine)
        codes = np.full(len(ids), -1, dtype=np.int64)  # NO_HASH where an image failed to decode
        if len(scan.ids):
            where = np.searchsorted(scan.ids, ids).clip(0, len(scan.ids) - 1)
            found = scan.ids[where] == ids
            codes[found] = scan.phashes[where[found]]
        d = hamming(codes[i], codes[j])
        limit = hash_distance_limit(codes)
        if limit is not None:  # distrust hash distances that unrelated images here also reach
            off = limit < MIN_HASH_LIMIT
            tiers = tuple(
                replace(t, hamming=None if t.hamming is None or off else min(t.hamming, limit)) for t in tiers
            )
            use_hash = any(t.hamming is not None for t in tiers)
            if off:
                log.info("perceptual hashes do not tell images apart in this collection: vectors only")
    else:
        d = np.full(len(i), 255, dtype=np.int16)
    keep = _tier_mask(tiers[-1], s, d)
    i, j, s, d = i[keep], j[keep], s[keep], d[keep]
    node_groups = _tier_groups(len(ids), s, i, j, d, tiers)
    members = _members(engine, ids[np.unique(np.concatenate([np.concatenate(g) for g in node_groups.values() if g]
                                                            or [np.zeros(0, np.int64)]))])  # fmt: skip
    groups: dict[str, list[Group]] = {}
    for tier in tiers:
        out = []
        for g in node_groups[tier.name]:
            present = [int(p) for p in g if int(ids[p]) in members]  # rows deleted since the snapshot drop out
            if len(present) < 2:
                continue
            ms = sorted((members[int(ids[p])] for p in present), key=_keeper_order)
            pos = {int(ids[p]): p for p in present}
            order = [pos[m.id] for m in ms]
            sims = vecs[order] @ vecs[order[0]]
            bits = hamming(codes[order], np.full(len(order), codes[order[0]])) if codes is not None else None
            ms = [
                Member(m.id, m.path, m.width, m.height, m.size, min(1.0, float(x)),
                       None if bits is None or bits[n] == 255 else int(bits[n]))
                for n, (m, x) in enumerate(zip(ms, sims, strict=True))
            ]  # fmt: skip
            ms[1:] = sorted(ms[1:], key=lambda m: (-(m.similarity or 0), m.id))
            out.append(Group(tier.name, ms[0], ms[1:]))
        groups[tier.name] = out
    sim = "cosine of the whitened search vectors" if whitened else "cosine of the search vectors"
    sim += " (or perceptual hash distance)" if use_hash else ""
    if phash and not use_hash:
        sim += " (perceptual hashes were not used: unrelated images here have near-identical hashes)"
    return NearDuplicates(tiers, groups, k, method, len(ids), len(i), time.perf_counter() - t0, sim)


# ---------------------------------------------------------------- neighbours of a set


def _exact_matches(engine: Engine, hashes: Iterable[str]) -> dict[str, int]:
    hashes = list(set(hashes))
    out: dict[str, int] = {}
    with engine.catalog.session() as s:
        for start in range(0, len(hashes), 500):
            q = select(ImageRecord.content_hash, func.min(ImageRecord.id)).where(
                ImageRecord.status == STATUS_OK, ImageRecord.content_hash.in_(hashes[start : start + 500])
            )
            out.update({h: i for h, i in s.execute(q.group_by(ImageRecord.content_hash))})
    return out


def neighbours_of_ids(engine: Engine, ids: Sequence[int], k: int = 10) -> list[QueryResult]:
    """The top-k of each indexed image in `ids` (itself excluded)."""
    out = []
    for image_id in ids:
        try:
            out.append(QueryResult({"id": int(image_id), "path": engine.get(int(image_id)).path},
                                   engine.search_id(int(image_id), k=k)))  # fmt: skip
        except NotFound as exc:
            out.append(QueryResult({"id": int(image_id)}, error=str(exc)))
    return out


def neighbours_of_folder(
    engine: Engine, folder: str | os.PathLike, k: int = 10, *, workers: int | None = None, batch_size: int = 256
) -> list[QueryResult]:
    """The top-k in the index of every image file under `folder` (set against set).

    A query file that is itself indexed is left out of its own results; a query file
    with the same bytes as an indexed one says so in `exact_match_id`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    paths = find_images(folder, skip_dirs=(str(engine.index_dir),))
    hashes = {}
    for p in paths:
        with contextlib.suppress(OSError):
            hashes[p] = content_hash(p)
    matches = _exact_matches(engine, hashes.values())
    enc = engine.snapshot().encoder
    workers = workers if workers is not None else (1 if len(paths) < 64 else default_workers())
    results: list[QueryResult] = []
    batch: list = []

    def flush() -> None:
        good = [d for d in batch if d.pixels is not None]
        vecs = enc.embed_pixels(np.stack([d.pixels for d in good])) if good else None
        row = 0
        for d in batch:
            p = paths[d.index]
            r = QueryResult({"path": str(p)}, exact_match_id=matches.get(hashes.get(p, "")))
            if d.pixels is None:
                r.error = d.error
            else:
                try:
                    own = engine.get_by_path(str(p.resolve())).id
                except NotFound:
                    own = None
                r.neighbours = engine.search_vector(vecs[row : row + 1], k=k, exclude_id=own)
                row += 1
            results.append(r)
        batch.clear()

    for d in decode_many(paths, enc.image_size, workers=workers, max_pixels=engine.max_pixels):
        batch.append(d)
        if len(batch) >= batch_size:
            flush()
    flush()
    return results


# ---------------------------------------------------------------- the whole report


def build_report(
    engine: Engine,
    *,
    duplicates: bool = True,
    near: Sequence[Tier] | None = TIERS,
    k: int = DEFAULT_K,
    queries: str | os.PathLike | Sequence[int] | None = None,
    neighbours_k: int = 10,
    outliers_top: int | None = None,
    workers: int | None = None,
    phash: bool = True,
) -> Report:
    """Compute the sections asked for. `queries`: a folder, or ids of indexed images.
    The near-duplicate perceptual hashes and the outlier scores share one decoding pass."""
    snap = engine.snapshot()
    report = Report(str(engine.index_dir), snap.manifest.model_id, engine.catalog.count(STATUS_OK),
                    datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    if duplicates:
        report.exact = exact_duplicates(engine)
    scan = None
    if outliers_top is not None or (near and phash and any(t.hamming is not None for t in near)):
        scan = scan_images(engine, workers=workers)
    if near:
        report.near = near_duplicates(engine, near, k=k, phash=phash, scan=scan)
    if queries is not None:
        report.neighbours_k = neighbours_k
        if isinstance(queries, (str, os.PathLike)):
            report.neighbours = neighbours_of_folder(engine, queries, neighbours_k, workers=workers)
        else:
            report.neighbours = neighbours_of_ids(engine, list(queries), neighbours_k)
    if outliers_top is not None:
        report.outliers = outliers(engine, outliers_top, scan=scan)
    return report


def write_report(report: Report, out: str | os.PathLike, fmt: str | None = None, **kw) -> Path:
    """Write `report` as html, json or csv (see :mod:`search.report_formats`)."""
    from .report_formats import write_report as write

    return write(report, out, fmt, **kw)
