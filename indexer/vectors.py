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
it, so a publish (indexer/publish.py) switches them to the new files all at once.

Vectors are L2-normalised, so inner product is cosine similarity in [-1, 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from encoder.atomic import atomic_write_via
from encoder.errors import ConfigError

from . import ondisk, ondisk_tune
from .neighbours import (
    SCORE_ROWS,
    top_k_blocks,
)
from .segments import SegmentStore

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
