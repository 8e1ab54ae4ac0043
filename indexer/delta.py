"""Small changes published without rebuilding the search index: the index as it was, and a delta.

A publish used to build the search index again for any change: HNSW at 1M vectors took ~26 min
here and wrote ~1.2 GB to add 1,000 images; an on-disk IVF-PQ index copies its lists (85 MB at
1M; docs/benchmarks.md, "Append-only vector segments"). When what changed since the index was
built is small (:func:`plan_delta`), a publish instead links that index unchanged (the *base*:
``search.faiss``, its (id, fingerprint) table ``search.ids.npy`` and, on disk, its lists) and
writes only ``delta.npy``, which names

- the ids to search exactly: added, or whose vector changed, since the base was built. Their
  vectors are the generation's exact vectors (its segments), read into RAM when a reader opens it;
- the ids the base must not return: changed or removed since. They are excluded by a FAISS ID
  selector while the base is searched, not filtered out afterwards, so a query still gets k results.

:class:`DeltaIndex` searches both and merges them, answering like a FAISS index, so every caller
(the engine, the reports' kNN, an on-disk index's re-rank) uses it as it used the base. Deltas do not
chain: each publish compares the store with the base's table, so the delta grows with every
publish until it passes its bounds and the index is built again. The base's neighbour table and hit
rows are linked unchanged too; readers correct them (search/engine.py, :class:`.hit_rows.LayeredHitRows`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from encoder.atomic import atomic_writer

from .neighbours import member
from .ondisk import IDS_DTYPE, SEARCH_IDS

DELTA = "delta.npy"
HIT_ROWS_DELTA = "hit_rows.delta.bin"  # the hit rows of a delta generation that differ from the base's
#: The base's (id, fingerprint) table: every non-flat index publishes one (an on-disk index always did).
BASE_IDS = SEARCH_IDS

#: A delta is published only over a base of at least this many vectors. Below it a rebuild costs
#: little (HNSW at 100k: ~1 min here), and one index is simpler for every reader.
DELTA_ABOVE = 100_000
#: Most ids a delta searches exactly. Each query reads their vectors whole: 10,000 x 240 float32 is
#: 9.6 MB, ~1 ms on one core (bench/delta_publish.py), the order of the base's own search (HNSW at 1M:
#: 0.5-3 ms at the tuned efSearch). Past it, the next publish builds the index again.
DELTA_MAX = 10_000
#: Most ids hidden from the base, as a share of it: the base's search still walks over them (HNSW's
#: graph, IVF's lists), so its tuned effort finds fewer live neighbours the more there are.
HIDDEN_MAX_SHARE = 0.05

_DTYPE = np.dtype([("id", "<i8"), ("search", "u1"), ("hide", "u1")])


@dataclass(frozen=True)
class Delta:
    """What changed since the base was built."""

    search: np.ndarray  # sorted ids searched exactly (added, or changed)
    hide: np.ndarray  # sorted ids in the base it must not return (changed, or removed)

    def describe(self) -> str:
        return f"{len(self.search):,} vectors searched exactly beside the index, {len(self.hide):,} hidden in it"


def diff(base: np.ndarray, ids: np.ndarray, fingerprints: np.ndarray) -> Delta:
    """The delta between a base's (id, fingerprint) table (sorted by id) and the stored vectors
    (`ids`, their `fingerprints`)."""
    ids = np.asarray(ids, dtype=np.int64)
    present = member(base["id"], ids)
    pos = np.searchsorted(base["id"], ids)[present]
    same = present.copy()
    same[present] = base["fp"][pos] == fingerprints[present]
    changed = ids[present & ~same]
    removed = np.setdiff1d(base["id"], ids)
    return Delta(np.unique(ids[~same]), np.union1d(changed, removed))


def within_bounds(delta: Delta, base_count: int) -> bool:
    """Whether `delta` may be published over a base of `base_count` vectors (else: build again)."""
    return (
        base_count >= DELTA_ABOVE
        and len(delta.search) <= DELTA_MAX
        and len(delta.hide) <= HIDDEN_MAX_SHARE * base_count
    )


def base_table(ids: np.ndarray, fingerprints: np.ndarray) -> np.ndarray:
    """The (id, fingerprint) table of the vectors an index is built from, sorted by id."""
    table = np.zeros(len(ids), dtype=IDS_DTYPE)
    table["id"], table["fp"] = ids, fingerprints
    table.sort(order="id")
    return table


def write_delta(delta: Delta, path: Path) -> None:
    """One .npy file (no pickling): both id sets in one array, so they are never read apart."""
    both = np.union1d(delta.search, delta.hide)
    rows = np.zeros(len(both), dtype=_DTYPE)
    rows["id"] = both
    rows["search"] = np.isin(both, delta.search)
    rows["hide"] = np.isin(both, delta.hide)
    with atomic_writer(path) as fh:
        np.lib.format.write_array(fh, rows, allow_pickle=False)


def read_delta(path: Path) -> Delta:
    """ValueError if the file is not a delta this module wrote; OSError if it cannot be read."""
    rows = np.load(os.fspath(path), allow_pickle=False)
    if rows.dtype != _DTYPE or rows.ndim != 1 or (len(rows) and np.any(np.diff(rows["id"]) <= 0)):
        raise ValueError(f"{path}: not a delta file")
    return Delta(rows["id"][rows["search"] > 0].copy(), rows["id"][rows["hide"] > 0].copy())


def inner_index(index: object) -> faiss.Index:
    """The index that does the searching, below an id map or a delta."""
    if isinstance(index, DeltaIndex):
        index = index.base
    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)


class DeltaIndex:
    """A base FAISS index with some of its ids hidden, and vectors beside it searched exactly;
    searched as one index (``search``, ``ntotal``, ``d``, ``metric_type``). Read-only, thread-safe."""

    def __init__(self, base: faiss.Index, delta: Delta, vectors: np.ndarray) -> None:
        if len(vectors) != len(delta.search):
            raise ValueError(f"{len(delta.search)} delta ids, {len(vectors)} vectors")
        self.base, self.delta = base, delta
        self.ids = np.asarray(delta.search, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.d = int(base.d)
        self.metric_type = base.metric_type
        self.ntotal = int(base.ntotal) - len(delta.hide) + len(self.ids)
        self._batch = faiss.IDSelectorBatch(np.asarray(delta.hide, dtype=np.int64))
        self._selector = faiss.IDSelectorNot(self._batch)  # holds a pointer to _batch: keep both

    def hidden(self, ids: np.ndarray) -> np.ndarray:
        """True where an id of the base is hidden (changed or removed since it was built)."""
        return member(self.delta.hide, ids)

    def changed(self, image_id: int) -> bool:
        """Whether the base's view of `image_id` is out of date (added, changed or removed since)."""
        return bool(member(self.delta.hide, [image_id])[0] or member(self.ids, [image_id])[0])

    def search(
        self, x: np.ndarray, k: int, params: faiss.SearchParameters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) like ``faiss.Index.search``: the base's results, hidden ids excluded, merged
        with the exact scores of the delta's vectors. For an L2 base (the on-disk index, trained on unit
        vectors) the delta's inner products become squared L2 distances, 2 - 2 x cosine."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.d)
        bd, bi = self.base.search(x, k, params=self._params(params))
        if not len(self.ids):
            return bd, bi
        s = x @ self.vectors.T
        kk = min(k, len(self.ids))
        top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        ds, di = np.take_along_axis(s, top, 1), self.ids[top]
        ascending = self.metric_type == faiss.METRIC_L2
        if ascending:
            ds = 2.0 - 2.0 * ds
        dist = np.concatenate([np.where(bi >= 0, bd, np.inf if ascending else -np.inf), ds], axis=1)
        ids = np.concatenate([bi, di], axis=1)
        order = np.argsort(dist if ascending else -dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, order, 1).astype(np.float32), np.take_along_axis(ids, order, 1)

    def exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the `k` delta vectors most like the one vector `q`, best first."""
        if not len(self.ids):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        s = self.vectors @ np.asarray(q, dtype=np.float32).reshape(-1)
        top = np.argsort(-s, kind="stable")[:k]
        return s[top], self.ids[top]

    def _params(self, given: faiss.SearchParameters | None) -> faiss.SearchParameters | None:
        """Search parameters for the base with the hidden ids excluded: a new object every call
        (FAISS's id map swaps the selector inside the one it is given while it searches)."""
        if not len(self.delta.hide):
            return given
        inner = inner_index(self.base)
        if hasattr(inner, "hnsw"):
            p = faiss.SearchParametersHNSW()
            p.efSearch = int(getattr(given, "efSearch", 0) or inner.hnsw.efSearch)
        else:
            try:
                ivf = faiss.extract_index_ivf(inner)
            except RuntimeError:
                p = faiss.SearchParameters()
            else:
                p = faiss.SearchParametersIVF()
                p.nprobe = int(getattr(given, "nprobe", 0) or ivf.nprobe)
        p.sel = self._selector
        return p
