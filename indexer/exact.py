"""The exact vectors of a published generation, read-only: what a server asks of them.

A server needs the exact (float32) vectors for four things besides its search index: a by-id
query's own vector, a filtered query (exact search among the ids a filter allows: approximate
indexes lose recall under a filter), the re-rank of an on-disk IVF-PQ's candidates
(indexer/ondisk.py), and reports that compare every vector (search/reports/).

Where a generation keeps them:

- a **flat** generation's search index is ``vectors.faiss`` (an ``IndexIDMap2(IndexFlatIP)``),
  and the same file serves as its exact vectors (:class:`FlatVectors`);
- any other generation reads them from its ``segments/`` (hard links to the writer's append-only
  segments, indexer/segments.py), memory-mapped (:class:`SegmentVectors`): a publish then writes no
  copy of the vectors, so adding 1,000 images to a million-image index writes ~1 MB of vectors,
  not the 968 MB flat file (docs/pending-16-store.md);
- a generation published before that (a ``vectors.faiss`` beside an approximate index, with or
  without segments) keeps being read from its ``vectors.faiss``.

Everything here opens files read-only and memory-mapped: the page cache holds one copy for every
server process (``--workers``), and a published file is never written in place.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import ondisk
from .layout import SEGMENTS, STORE
from .manifest import Manifest
from .neighbours import SCORE_ROWS, member, top_k_blocks
from .segments import SegmentError, SegmentStore, has_segments
from .vectors import apply_search_params, read_search_index

__all__ = [
    "ExactVectors",
    "FlatVectors",
    "SegmentVectors",
    "generation_has_vectors",
    "open_exact_vectors",
    "read_mapped",
]


class ExactVectors(ABC):
    """The exact vectors of one generation, by catalog id (read-only)."""

    dim: int

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def ids(self) -> np.ndarray:
        """Every stored id, ascending (int64)."""

    @abstractmethod
    def get(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """(len(ids), dim) float32, row i the vector of ids[i]; KeyError for an id not stored."""

    @abstractmethod
    def contains(self, ids: np.ndarray) -> np.ndarray:
        """A bool mask: which of `ids` are stored."""

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ascending, their vectors): a copy, 4 x dim bytes a vector (reports compare them all)."""
        ids = self.ids()
        return ids, self.get(ids)

    def search_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-`k` by inner product among the stored vectors of `allowed` (ids not stored are
        ignored), as FAISS answers: (similarities, ids), each (len(q), k), best first, padded with
        -inf / -1 where fewer than `k` are allowed. Scores `SCORE_ROWS` vectors at a time."""
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, self.dim)
        if k < 1:
            return np.empty((len(q), 0), dtype=np.float32), np.empty((len(q), 0), dtype=np.int64)
        allowed = np.sort(np.asarray(allowed, dtype=np.int64).reshape(-1))
        allowed = allowed[np.r_[True, allowed[1:] != allowed[:-1]]] if len(allowed) else allowed  # unique
        allowed = allowed[self.contains(allowed)]
        return top_k_blocks(q, self.blocks(allowed), k)

    def blocks(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, their vectors), `SCORE_ROWS` at a time, for stored, unique, ascending `ids`."""
        for start in range(0, len(ids), SCORE_ROWS):
            chunk = ids[start : start + SCORE_ROWS]
            yield chunk, self.get(chunk)


class FlatVectors(ExactVectors):
    """Over a FAISS ``IndexIDMap2(IndexFlatIP)`` (``vectors.faiss``, memory-mapped): a flat
    generation's search index, or the store of a generation published before segments."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.dim = int(index.d)
        self._flat = faiss.downcast_index(index.index)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @cached_property
    def _locations(self) -> tuple[np.ndarray, np.ndarray]:
        """(stored ids ascending, each one's row in the file). Built on first use, 16 bytes a
        vector: a flat generation answers by-id queries from its neighbour table, so most never
        need it. An id stored twice (a store from before segments) reads its newest row, as
        FAISS's own ``reconstruct`` does."""
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        last = np.r_[ids[1:] != ids[:-1], True] if len(ids) else np.empty(0, bool)
        return ids[last], order[last]

    @cached_property
    def _rows(self) -> np.ndarray:
        """The file's vectors as an (n, dim) view (no copy; valid while `index` lives)."""
        n = len(self)
        if not n:
            return np.empty((0, self.dim), dtype=np.float32)
        return faiss.rev_swig_ptr(self._flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def ids(self) -> np.ndarray:
        return self._locations[0].copy()

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return member(self._locations[0], ids)

    def get(self, ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        stored, rows = self._locations
        found = member(stored, ids)
        if not found.all():
            raise KeyError(int(ids[~found][0]))
        return np.array(self._rows[rows[np.searchsorted(stored, ids)]], dtype=np.float32)

    def search_among(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's own exact search under an id filter (what queries searched before segments)."""
        q = np.ascontiguousarray(q, dtype=np.float32).reshape(-1, self.dim)
        sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
        return self.index.search(q, k, params=faiss.SearchParameters(sel=sel))


class SegmentVectors(ExactVectors):
    """Over a generation's segments, opened read-only and memory-mapped (indexer/segments.py):
    RAM holds each live id and where its row is (16 bytes a vector), the vectors stay in the files."""

    def __init__(self, store: SegmentStore) -> None:
        self.store = store
        self.dim = int(store.dim)
        # A server reads rows here one at a time (a re-rank's candidates, by-id vectors): without this,
        # each read faulted in ~128 KB of read-ahead and after 1,000 queries at 10M 8.5 GB of the
        # 9.6 GB store was resident (docs/benchmarks.md, "10M measured"). A filtered scan of a long run
        # of rows loses read-ahead with it (docs/pending-16-ondisk.md).
        store.advise_random()

    def __len__(self) -> int:
        return len(self.store)

    def ids(self) -> np.ndarray:
        return self.store.ids()

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.store.contains(ids)

    def get(self, ids: np.ndarray | list[int]) -> np.ndarray:
        return self.store.get(ids)

    def blocks(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.store.vector_blocks(ids, SCORE_ROWS)  # runs of consecutive rows: views of the files


# ---------------------------------------------------------------- opening a generation's


def open_exact_vectors(files: Path, manifest: Manifest, search: faiss.Index) -> ExactVectors:
    """The exact vectors of the generation in `files` that `manifest` describes; `search` is its
    search index, already open (a flat generation's *is* its exact vectors). A ``vectors.faiss`` in
    the generation is read when there is one (flat, or published before segments replaced it);
    else the segments. OSError if the generation has neither (removed under us: the engine opens
    the newer one); SegmentError if its segments are damaged or not the ones published."""
    if manifest.search_file == STORE:
        return FlatVectors(search)
    if (files / STORE).exists():
        return FlatVectors(read_mapped(files / STORE))
    directory = files / SEGMENTS
    if not has_segments(directory):
        raise FileNotFoundError(f"{files}: no exact vectors (neither {STORE} nor {SEGMENTS}/)")
    store = SegmentStore.open(directory, manifest.dim, writable=False)
    if len(store) != manifest.count or store.dim != manifest.dim:
        raise SegmentError(
            f"{directory}: {len(store)} vectors of {store.dim} dimensions, "
            f"the generation published {manifest.count} of {manifest.dim}"
        )
    return SegmentVectors(store)


def generation_has_vectors(files: Path, manifest: Manifest) -> bool:
    """Whether the generation in `files` still has what :func:`open_exact_vectors` opens (the writer
    publishes again if it is gone)."""
    if manifest.search_file == STORE:
        return (files / STORE).exists()
    return (files / STORE).exists() or has_segments(files / SEGMENTS)


def read_mapped(path: Path, params: dict[str, Any] | None = None) -> faiss.Index:
    """An index file opened read-only with its vectors memory-mapped, where FAISS can (the flat
    codes of the store, HNSW's storage, IVF's lists): the page cache then holds one copy for
    every server process over the index (``--workers``), and opening costs no copy. Safe
    because a published file is never written in place (indexer/generations.py). Otherwise,
    as the indexer reads it. An on-disk IVF index maps its lists its own way (indexer/ondisk.py)."""
    if ondisk.has_lists(path):
        return ondisk.read(path, params)
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", None)  # FAISS >= 1.10
    if flags is None:
        return read_search_index(path, params)
    try:
        index = faiss.read_index(os.fspath(path), flags | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return read_search_index(path, params)
    apply_search_params(index, params or {})
    return index
