"""The vectors: the exact store keyed by catalog id, and the search index built from it.

- The *store* holds the exact vectors, the source of truth: the indexer's is a
  :class:`~indexer.segments.SegmentStore` (append-only segments, ``segments/``);
  :class:`VectorStore` keeps them in memory as one FAISS index (tests, benchmarks).
- ``vectors.faiss``: the store as one exact ``IndexIDMap2(IndexFlatIP)``, written by a
  publish only when the search index is flat (small corpora: it is what queries search),
  or when the store is not segments in the index directory. Otherwise servers read the
  exact vectors from the generation's segments (indexer/exact.py) and a publish writes
  no copy of them.
- ``search.faiss``: for large corpora, an approximate index (HNSW, IVF or
  IVF-PQ) rebuilt from the store after a run changes it. Approximate types
  cannot remove vectors cheaply (HNSW not at all), so they are derived, never
  edited.
``manifest.json`` (indexer/manifest.py) is written last and names the type, parameters,
the reason for the choice, the model, a generation number that readers watch, and the
generation's directory (indexer/generations.py): readers open only the files in
it, so a publish switches them to the new files all at once.

Vectors are L2-normalised, so inner product is cosine similarity in [-1, 1].
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from encoder.atomic import atomic_write_via, atomic_writer
from encoder.errors import ConfigError

from . import delta, ondisk, ondisk_tune
from .catalog import Catalog
from .generations import (
    generation_dir_name,
    kill_point,
    link_into,
    link_model,
    restore_working,
    seal_generation,
    start_generation,
    tidy_generations,
)
from .hit_rows import HitRows, changed_rows, read_hit_rows, write_hit_rows
from .layout import HIT_ROWS, NEIGHBOURS, NEIGHBOURS_K, SEARCH, SEGMENTS, STORE
from .manifest import Manifest
from .neighbours import (
    SCORE_ROWS,
    fingerprints,
    read_neighbours,
    table_dtype,
    top_k_blocks,
    update_neighbours,
    write_neighbours,
)
from .segments import SegmentStore, has_segments, segment_files

#: The on-disk index with 8-bit scalar codes instead of PQ (params["codes"] = "sq8"): 248 bytes a vector
#: on disk at 240 dims (PQ: 68), quicker to build and to re-rank from; docs/benchmarks.md compares them.
ONDISK_SQ8 = "ivfsq8-disk"
INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq", ondisk.ONDISK, ONDISK_SQ8)
#: Up to this many vectors, exact search is fast enough (~N*d multiply-adds per query:
#: 100k x 128 is a few ms on one core) and perfectly accurate.
FLAT_MAX = 100_000


@dataclass
class IndexPlan:
    """Which FAISS index type to build, with what parameters, and why."""

    index_type: str
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def plan_index(n: int, dim: int, requested: str = "auto") -> IndexPlan:
    """Choose the search index for `n` vectors of `dim` (see the module doc)."""
    if requested not in INDEX_TYPES:
        raise ConfigError(f"unknown index type {requested!r}; choose from {', '.join(INDEX_TYPES)}")
    if requested == "auto":
        if n <= FLAT_MAX:
            return IndexPlan("flat", {}, f"{n} vectors <= {FLAT_MAX:,}: exact search is fast and exact")
        if n > ondisk.ONDISK_ABOVE:
            requested = ondisk.ONDISK
            why = f"{n:,} vectors > {ondisk.ONDISK_ABOVE:,}: HNSW's ~1,240 bytes a vector in RAM cost too much"
        else:
            requested = "hnsw"
            why = f"{n:,} vectors > {FLAT_MAX:,}: exact search grows with N, HNSW stays ~log N"
    else:
        why = "asked for"
    if requested == "flat":
        return IndexPlan("flat", {}, why)
    if requested == "hnsw":
        return IndexPlan("hnsw", {"M": 32, "efConstruction": 80, "efSearch": 96}, why)
    if requested in (ondisk.ONDISK, ONDISK_SQ8):
        if n < 1024:  # too few to train the PQ codebooks
            return IndexPlan("flat", {}, f"{requested} asked for, but {n} vectors are too few to train it: flat")
        params = ondisk.ondisk_params(n, dim)
        if requested == ONDISK_SQ8:  # the same on-disk index, its codes 8-bit scalars
            params, why = {**params, "codes": "sq8"}, f"{why}; 8-bit scalar codes"
        return IndexPlan(ondisk.ONDISK, params, why)
    # IVF needs ~39 training points per list; with too few vectors it cannot train.
    nlist = int(min(max(1, 4 * math.sqrt(n)), max(1, n // 39)))
    if requested == "ivf":
        if n < 39:
            return IndexPlan("flat", {}, f"ivf asked for, but {n} vectors are too few to train it: flat")
        return IndexPlan("ivf", {"nlist": nlist, "nprobe": max(1, min(nlist, 16))}, why)
    # ivfpq: m sub-quantisers of 8 bits, each needs 256 training points.
    m = next(mm for mm in (dim // 8, dim // 4, dim // 2, dim, 1) if mm >= 1 and dim % mm == 0)
    if n < 256 * 4:
        return IndexPlan("flat", {}, f"ivfpq asked for, but {n} vectors are too few to train it: flat")
    return IndexPlan(
        "ivfpq", {"nlist": nlist, "nprobe": max(1, min(nlist, 16)), "m": m, "nbits": 8}, why + f" ({m} bytes/code)"
    )


# ---------------------------------------------------------------- the store


class VectorStore:
    """Exact vectors keyed by int64 id; add, remove, fetch, save atomically."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorStore:
        index = faiss.read_index(os.fspath(path))
        return cls(index.d, index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, np.int64))

    def replace(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add, first removing any vectors already stored under these ids."""
        self.remove(ids)
        self.add(ids, vectors)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything in the store, in storage order."""
        flat = faiss.downcast_index(self.index.index)
        vecs = faiss.rev_swig_ptr(flat.get_xb(), len(self) * self.dim).reshape(len(self), self.dim).copy()
        return self.ids(), vecs

    def get(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Vectors for `ids` (KeyError for an unknown id)."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, id_ in enumerate(ids):
            try:
                out[i] = self.index.reconstruct(int(id_))
            except RuntimeError:
                raise KeyError(int(id_)) from None
        return out

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_index(self.index, Path(path))

    def write_flat(self, path: str | os.PathLike) -> None:
        """Write the store as the one FAISS file a server opens (what SegmentStore.write_flat does)."""
        self.save(path)


def atomic_write_index(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index so a reader sees the old file or the new one."""
    atomic_write_via(path, lambda tmp: faiss.write_index(index, tmp))


# ---------------------------------------------------------------- the search index


def build_search_index(store: VectorStore, plan: IndexPlan, seed: int = 0) -> faiss.Index:
    """Build the approximate index named by `plan` from the store's vectors."""
    ids, vecs = store.all_vectors()
    d = store.dim
    p = plan.params
    if plan.index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = p["efConstruction"]
        inner.hnsw.efSearch = p["efSearch"]
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vecs, ids)
        return index
    quantizer = faiss.IndexFlatIP(d)
    if plan.index_type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, p["nlist"], faiss.METRIC_INNER_PRODUCT)
    elif plan.index_type == "ivfpq":
        index = faiss.IndexIVFPQ(quantizer, d, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"no search index to build for type {plan.index_type!r}")
    rng = np.random.default_rng(seed)
    sample = vecs if len(vecs) <= 200_000 else vecs[rng.choice(len(vecs), 200_000, replace=False)]
    index.train(sample)
    index.add_with_ids(vecs, ids)
    index.nprobe = p["nprobe"]
    return index


#: Approximate indexes are tuned when they are published: the smallest search effort
#: (HNSW efSearch, IVF nprobe) whose recall@10 against exact search, measured on stored
#: vectors as by-id queries, reaches this. Measured on 1M synthetic vectors, HNSW's fixed
#: efSearch 96 gave recall@10 0.83 (docs/benchmarks.md, "HNSW recall"); a fixed value
#: cannot be right for every collection.
RECALL_TARGET = 0.95
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # 512: ~3.5 ms/query at 1M on 1 core
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TUNE_QUERIES = 200
TUNE_K = 10


def tune_search(
    index: faiss.Index,
    store: VectorStore,
    plan: IndexPlan,
    *,
    target: float = RECALL_TARGET,
    queries: int = TUNE_QUERIES,
    seed: int = 0,
) -> IndexPlan:
    """Measure recall and pick the search effort of an approximate `index`; returns the plan
    with its parameters (``efSearch`` or ``nprobe``, plus ``recall_at_10``) and reason updated.

    Queries are stored vectors of sampled ids, searched as a by-id query does (the query
    itself left out); truth is the exact top-10 from the store. The ladder stops at the
    first value that reaches `target`, or where recall stops improving, or at its top.
    The on-disk index tunes ``nprobe`` and ``rerank`` (its re-rank depth) together: the
    cheapest pair that reaches `target` (indexer/ondisk_tune.py).
    """
    if plan.index_type == "hnsw":
        key, ladder = "efSearch", EF_LADDER
    elif plan.index_type in ("ivf", "ivfpq", ondisk.ONDISK):
        key, ladder = "nprobe", tuple(v for v in NPROBE_LADDER if v <= plan.params["nlist"])
    else:
        return plan
    ids = store.ids()
    k = min(TUNE_K, len(ids) - 1)
    if k < 1:
        return plan
    rng = np.random.default_rng(seed)
    qids = rng.choice(ids, size=min(queries, len(ids)), replace=False)
    q = store.get(qids)
    exact = exact_top(store, q, k + 1)
    truth = [set(row[row != qi][:k].tolist()) for row, qi in zip(exact, qids, strict=True)]
    if plan.index_type == ondisk.ONDISK:  # recall after the exact re-rank, as the engine searches
        return _tune_ondisk(index, store, plan, q, truth, qids, k, target)

    def recall_at(value: int) -> float:
        apply_search_params(index, {key: value})
        _, found = index.search(q, k + 1)
        hits = [len(t & set(row[row != qi][:k].tolist())) for t, row, qi in zip(truth, found, qids, strict=True)]
        return float(np.mean(hits)) / k

    chosen, recall = ladder[0], recall_at(ladder[0])
    for value in ladder[1:]:
        if recall >= target:
            break
        r = recall_at(value)
        if r < recall + 0.002:  # no better with more effort (IVF-PQ's codes cap it): stop
            break
        chosen, recall = value, r
    apply_search_params(index, {key: chosen})
    params = {**plan.params, key: chosen, "recall_at_10": round(recall, 3)}
    note = f"; {key} {chosen}: recall@10 {recall:.3f} on {len(qids)} sampled queries"
    if recall < target:
        note += f" (below the {target} target: the most this index type gives here)"
    return IndexPlan(plan.index_type, params, plan.reason + note)


def exact_top(store: VectorStore | SegmentStore, q: np.ndarray, k: int) -> np.ndarray:
    """The ids of the exact top-`k` stored vectors by inner product for each row of `q`, best first
    (-1 where fewer are stored): the ground truth a search index is tuned against. A segment store
    whose in-memory flat copy is not built (:attr:`SegmentStore.index`: 9.6 GB at 10M vectors) is
    scanned block by block from its files instead, so the writer holds one block, not a copy."""
    if not isinstance(store, SegmentStore) or store.index_built:
        return store.index.search(np.ascontiguousarray(q, dtype=np.float32), k)[1]
    return top_k_blocks(q, store.vector_blocks(store.ids(), SCORE_ROWS), k)[1]


def _tune_ondisk(
    index: faiss.Index,
    store: VectorStore | SegmentStore,
    plan: IndexPlan,
    q: np.ndarray,
    truth: list[set[int]],
    qids: np.ndarray,
    k: int,
    target: float,
) -> IndexPlan:
    """tune_search for the on-disk index: ``nprobe`` and ``rerank`` from the pair ladder."""
    tuned = ondisk_tune.tune(index, q, truth, store.get, k, target=target, nprobe_ladder=NPROBE_LADDER, exclude=qids)
    params = {**plan.params, "nprobe": tuned.nprobe, "rerank": tuned.rerank, "recall_at_10": round(tuned.recall, 3)}
    depth = ondisk.candidates(TUNE_K, tuned.rerank, int(index.ntotal))
    note = (
        f"; nprobe {tuned.nprobe}, rerank {tuned.rerank} ({depth} candidates at k {TUNE_K}):"
        f" recall@10 {tuned.recall:.3f} on {len(qids)} sampled queries"
    )
    if tuned.recall < target:
        note += f" (below the {target} target: the most this index type gives here)"
    return IndexPlan(plan.index_type, params, plan.reason + note)


def read_search_index(path: str | os.PathLike, params: dict[str, Any] | None = None) -> faiss.Index:
    """Open an index read-only, memory-mapped where FAISS supports it for the type (an on-disk
    index's lists from the ``.ivfdata`` file beside `path`, indexer/ondisk.py)."""
    if ondisk.has_lists(path):  # IO_FLAG_MMAP leaves such lists unmapped
        return ondisk.read(path, params)
    try:
        index = faiss.read_index(os.fspath(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        index = faiss.read_index(os.fspath(path))
    apply_search_params(index, params or {})
    return index


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
    if "efSearch" in params and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params and hasattr(inner, "nprobe"):
        inner.nprobe = int(params["nprobe"])


def refresh_neighbours(
    index_dir: Path, store: VectorStore, index: faiss.Index, k: int, *, progress: bool = False
) -> str:
    """Bring ``neighbours.npy`` up to date with the store, searching `index` (the store itself or
    the search index built from it) where rows must be searched again; `k` 0 removes the table.
    Returns what was done, in words. Vectors the old table describes (by fingerprint) keep their
    rows, so a new model, which changes every vector, recomputes everything by itself."""
    path = index_dir / NEIGHBOURS
    if k <= 0:
        path.unlink(missing_ok=True)
        return ""
    if len(store) > ondisk.NEIGHBOURS_MAX:
        # Published empty (every by-id query then searches): filling it would cost one search per
        # image; an empty table of width k, not none, so the indexer does not see it as missing.
        write_neighbours(np.zeros(0, dtype=table_dtype(k)), path)
        return f"no precomputed neighbours above {ondisk.NEIGHBOURS_MAX:,} images (one search each to fill)"
    ids, vecs = store.all_vectors()
    table, stats = update_neighbours(ids, vecs, index, read_neighbours(path, k), k=k, progress=progress)
    write_neighbours(table, path)
    return stats.describe()


def refresh_hit_rows(index_dir: Path, store: VectorStore, catalog: Catalog | None) -> None:
    """Write ``hit_rows.bin``: the catalog rows of the images in the store (None: remove it,
    so that it can never describe another generation)."""
    path = index_dir / HIT_ROWS
    if catalog is None:
        path.unlink(missing_ok=True)
        return
    stored = set(store.ids().tolist())
    write_hit_rows(HitRows.build(r for r in catalog.indexed_rows() if r[0] in stored), path)


def _exact_in_segments(index_dir: Path, store: VectorStore | SegmentStore) -> bool:
    """Whether `store` is the segment store saved in `index_dir`: a generation then links its
    segments, which servers read (indexer/exact.py), so no flat copy of the vectors is needed.
    ValueError if it has changes not saved yet (the files would not be the store published)."""
    if not isinstance(store, SegmentStore) or not has_segments(index_dir / SEGMENTS):
        return False
    if store.directory.resolve() != (index_dir / SEGMENTS).resolve():
        return False
    if store.unsaved:
        raise ValueError(f"{store.directory}: save the store before publishing it (a generation links its files)")
    return True


def publish(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    plan: IndexPlan,
    model_id: str | None,
    previous: Manifest | None,
    *,
    neighbours_k: int = NEIGHBOURS_K,
    catalog: Catalog | None = None,
    progress: bool = False,
    store_seq: int = 0,
    allow_delta: bool = True,
) -> Manifest:
    """Write ``vectors.faiss`` if the plan is flat (or the store is not the index's saved segments),
    (re)build the search index if the plan needs one, bring the neighbour table up to date
    (`neighbours_k` 0: none), write the hit rows of the stored images from `catalog` (None: no hit
    rows; hits are then read from the catalog), then make them a new generation
    (:func:`commit_generation`). A segment store must have been saved by the caller.
    `store_seq`: the catalog's sequence number of the store save published. When little changed
    since the previous generation's search index was built, that index is reused with a delta
    beside it (:func:`_publish_delta`) unless `allow_delta` is False."""
    kill_point("publish:begin")
    # The flat file costs 4 x dim bytes a *stored* vector at every publish (968 MB at 1M): written only
    # where it is the search index (<= FLAT_MAX vectors), or the store's only copy on disk.
    flat_file = plan.index_type == "flat" or not _exact_in_segments(index_dir, store)
    if flat_file:
        store.write_flat(index_dir / STORE)
    kill_point("publish:store")
    # The store's (id, fingerprint) table, read once: a delta compares it with the base's, a
    # rebuilt index publishes it as its own (1M x 240: a 1 GB read each time).
    store_table = functools.cache(lambda: _store_table(store))
    if allow_delta:
        published = _publish_delta(
            index_dir, store, store_table, plan, model_id, previous, neighbours_k, catalog, store_seq, flat_file
        )
        if published is not None:
            return published
    for name in (delta.DELTA, delta.HIT_ROWS_DELTA):  # a delta belongs to the base it was made over
        (index_dir / name).unlink(missing_ok=True)
    if plan.index_type == "flat":
        search_file = STORE
        size = (index_dir / STORE).stat().st_size
        index = store.index
    elif plan.index_type == ondisk.ONDISK:
        same = previous is not None and previous.index_type == plan.index_type and previous.model_id == model_id
        index, params, note = ondisk.refresh(
            index_dir,
            _store_chunks(store),
            len(store),
            plan.params,
            previous.files(index_dir) if same and previous is not None else None,
            previous.params if same and previous is not None else None,
        )
        plan = tune_search(index, store, IndexPlan(plan.index_type, params, f"{plan.reason}; {note}"))
        apply_search_params(index, plan.params)
        kill_point("publish:search")
        search_file = SEARCH
        size = sum((index_dir / name).stat().st_size for name in (SEARCH, *ondisk.ONDISK_FILES))
    else:
        index = build_search_index(store, plan)
        plan = tune_search(index, store, plan)
        atomic_write_index(index, index_dir / SEARCH)
        with atomic_writer(index_dir / delta.BASE_IDS) as fh:  # what the next publish measures a delta against
            np.lib.format.write_array(fh, store_table(), allow_pickle=False)
        kill_point("publish:search")
        search_file = SEARCH
        size = (index_dir / SEARCH).stat().st_size
    if plan.index_type == "flat":
        for name in (SEARCH, delta.BASE_IDS):
            (index_dir / name).unlink(missing_ok=True)
    if plan.index_type != ondisk.ONDISK:  # left by an on-disk index published before: not this one's
        (index_dir / ondisk.SEARCH_DATA).unlink(missing_ok=True)
    neighbours_note = refresh_neighbours(index_dir, store, index, neighbours_k, progress=progress)
    kill_point("publish:neighbours")
    refresh_hit_rows(index_dir, store, catalog)
    kill_point("publish:hit_rows")
    manifest = Manifest(
        generation=(previous.generation + 1) if previous else 1,
        count=len(store),
        dim=store.dim,
        model_id=model_id,
        index_type=plan.index_type,
        params=plan.params,
        reason=plan.reason,
        search_file=search_file,
        bytes_per_vector=round(size / max(1, len(store)), 1),
        neighbours_k=neighbours_k,
        neighbours=neighbours_note,
        store_seq=store_seq,
    )
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def _store_chunks(store: VectorStore | SegmentStore) -> Callable[[], ondisk.Chunks]:
    """What :func:`ondisk.refresh` reads the vectors from: a segment store's, block by block from its
    files (a run of rows in one segment is a view of the mapping, not a copy); any other store's
    from one copy of every vector (tests, benchmarks: they are in memory anyway). At 10M vectors the
    copy was 9.6 GB in the writer."""
    if isinstance(store, SegmentStore):
        return lambda: store.vector_blocks(store.ids(), ondisk.CHUNK)
    ids, vecs = store.all_vectors()
    return lambda: ondisk.chunked(ids, vecs)


def _store_table(store: VectorStore | SegmentStore) -> np.ndarray:
    """The (id, fingerprint) table of every stored vector, sorted by id (indexer/delta.py). A segment
    store's vectors are fingerprinted block by block from its files (16 bytes a vector held, not a
    copy of every vector: 9.6 GB at 10M)."""
    if isinstance(store, SegmentStore):
        ids = store.ids()
        fps = [fingerprints(block) for _, block in store.vector_blocks(ids, SCORE_ROWS)]
        return delta.base_table(ids, np.concatenate(fps) if fps else fingerprints(np.empty((0, store.dim), np.float32)))
    ids, vecs = store.all_vectors()
    return delta.base_table(ids, fingerprints(vecs))


def _publish_delta(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    store_table: Callable[[], np.ndarray],
    plan: IndexPlan,
    model_id: str | None,
    previous: Manifest | None,
    neighbours_k: int,
    catalog: Catalog | None,
    store_seq: int,
    flat_file: bool,
) -> Manifest | None:
    """Publish the previous generation's search index, neighbour table and hit rows unchanged,
    with a delta of what changed since that index was built (indexer/delta.py); None (nothing
    done) when a delta cannot be or should not be: another type, model or table width, no base
    table, or a change past the delta's bounds. Then the caller builds the index again."""
    if (
        previous is None
        or not previous.directory
        or plan.index_type == "flat"
        or previous.index_type != plan.index_type
        or previous.search_file != SEARCH
        or previous.model_id != model_id
        or previous.dim != store.dim
        or previous.neighbours_k != neighbours_k
    ):
        return None
    base = previous.files(index_dir)
    try:
        table = np.load(base / delta.BASE_IDS, allow_pickle=False)
    except (OSError, ValueError):
        return None  # built before every index had its table: the next build writes one
    if table.dtype != ondisk.IDS_DTYPE or table.ndim != 1 or len(table) < delta.DELTA_ABOVE:
        return None  # (the size bound checked before the store is read)
    now = store_table()
    change = delta.diff(table, now["id"], now["fp"])
    if not delta.within_bounds(change, len(table)):
        return None
    names = [SEARCH, delta.BASE_IDS] + ([ondisk.SEARCH_DATA] if plan.index_type == ondisk.ONDISK else [])
    names += [NEIGHBOURS] if neighbours_k > 0 else []
    try:
        restore_working(index_dir, base, names)
    except OSError:
        return None
    kill_point("publish:search")
    delta.write_delta(change, index_dir / delta.DELTA)
    kill_point("publish:neighbours")
    hit_rows = _delta_hit_rows(index_dir, base, store, catalog)
    kill_point("publish:hit_rows")
    info = previous.delta or {"base_generation": previous.generation, "base_reason": previous.reason}
    manifest = Manifest(
        count=len(store),
        dim=store.dim,
        model_id=model_id,
        index_type=previous.index_type,
        params=previous.params,
        reason=f"{info['base_reason']}; reused from generation {info['base_generation']} with a delta",
        search_file=SEARCH,
        bytes_per_vector=previous.bytes_per_vector,
        neighbours_k=neighbours_k,
        neighbours=f"generation {info['base_generation']}'s table, corrected for the delta at query time"
        if neighbours_k > 0
        else "",
        store_seq=store_seq,
        delta={
            "base_generation": info["base_generation"],
            "base_reason": info["base_reason"],
            "search": len(change.search),
            "hide": len(change.hide),
            "hit_rows": hit_rows,
        },
    )
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def _delta_hit_rows(index_dir: Path, base: Path, store: VectorStore | SegmentStore, catalog: Catalog | None) -> str:
    """The hit rows of a delta generation: the base's with the rows that differ laid over them
    ("layered"), or all of them anew when the base has none ("full"), or none without a catalog."""
    delta_rows = index_dir / delta.HIT_ROWS_DELTA
    delta_rows.unlink(missing_ok=True)
    if catalog is None:
        (index_dir / HIT_ROWS).unlink(missing_ok=True)
        return "none"
    try:
        restore_working(index_dir, base, [HIT_ROWS])
        base_rows = read_hit_rows(index_dir / HIT_ROWS)
    except OSError:
        base_rows = None
    if base_rows is None:
        refresh_hit_rows(index_dir, store, catalog)
        return "full"
    stored = set(store.ids().tolist())
    write_hit_rows(changed_rows(base_rows, (r for r in catalog.indexed_rows() if r[0] in stored)), delta_rows)
    return "layered"


def republish_derived(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    manifest: Manifest,
    *,
    neighbours_k: int = NEIGHBOURS_K,
    catalog: Catalog | None = None,
    progress: bool = False,
) -> Manifest:
    """Bring only what is derived from an unchanged store up to date (the neighbour table, the
    hit rows: deleted, damaged, or made by an older lookalike) and publish a new generation.
    The search index is reused as it is: rebuilding HNSW at 1M vectors takes half an hour."""
    previous = replace(manifest)
    if manifest.search_file == STORE:
        index = store.index
    else:
        index = read_search_index(index_dir / manifest.search_file, manifest.params)
    manifest.neighbours = refresh_neighbours(index_dir, store, index, neighbours_k, progress=progress)
    manifest.neighbours_k = neighbours_k
    refresh_hit_rows(index_dir, store, catalog)
    flat_file = manifest.search_file == STORE or not _exact_in_segments(index_dir, store)
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def commit_generation(
    index_dir: Path, manifest: Manifest, previous: Manifest | None, *, flat_file: bool = True
) -> None:
    """Make the working files just written a new generation directory, then switch ``manifest.json``
    to it (the one write readers act on), then remove generations older than `previous` (a reader
    may be opening that one right now). Sets `manifest`'s generation and directory. `flat_file`:
    the generation has a ``vectors.faiss``; without, one left in the index directory by an earlier
    publish is deleted once the switch is made (the generations that have it keep their links)."""
    manifest.generation = (previous.generation + 1) if previous else 1
    manifest.directory = generation_dir_name(manifest.generation)
    gen = start_generation(index_dir, manifest.generation)
    names = [STORE] if flat_file else []
    names += [f"{SEGMENTS}/{name}" for name in segment_files(index_dir / SEGMENTS)]
    if manifest.search_file != STORE:
        names.append(manifest.search_file)
        if (index_dir / delta.BASE_IDS).exists():  # an index built before every type had one has none
            names.append(delta.BASE_IDS)
    if manifest.index_type == ondisk.ONDISK:
        names.append(ondisk.SEARCH_DATA)
    if manifest.delta:
        names.append(delta.DELTA)
        if manifest.delta.get("hit_rows") == "layered":
            names.append(delta.HIT_ROWS_DELTA)
    if manifest.neighbours_k > 0 and (index_dir / NEIGHBOURS).exists():
        names.append(NEIGHBOURS)
    if (index_dir / HIT_ROWS).exists():  # refresh_hit_rows removes it when there are none to publish
        names.append(HIT_ROWS)
    link_into(gen, index_dir, names)
    link_model(gen, index_dir)
    manifest.write(gen)  # the generation describes itself (for people; readers read the pointer)
    kill_point("generation:manifest")
    seal_generation(gen)
    manifest.write(index_dir, stamp=False)  # the same manifest as the generation's own copy
    kill_point("pointer")
    if not flat_file:  # only now: before the switch, an index from before generations still reads it
        (index_dir / STORE).unlink(missing_ok=True)
    tidy_generations(index_dir, manifest.generation, point="cleanup")
