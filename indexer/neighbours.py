"""The nearest neighbours of every indexed image, computed when the index is published.

"More like this image" for an indexed image is a question whose every possible
form is known at index time: there are N images and the answer depends only on
the published vectors. So ``publish`` answers it ahead of time for the first
``k`` neighbours of each image and writes the answers to ``neighbours.npy``; the
engine serves a by-id query from one row of that table (a binary search and a
memory-mapped read) instead of a search. Measured on this project's 2-core
machine (docs/benchmarks.md, "Precomputed neighbours"), a by-id search cost
2-3 ms of CPU at 100k (exact scan) and 1M vectors (HNSW at recall@10 0.95),
against ~0.3 ms for the rest of the request.

The rows are computed with the index that queries would search: exactly with
the flat store, or with the tuned approximate index (so a row is as good as a
live query, never worse). Queries the table cannot answer (deeper pages than
``k``, a path filter) fall back to a live search.

The table is kept current incrementally. Each row carries a fingerprint of its
image's vector, so a new publish can tell, without being told, which vectors are
new or changed (``added``) and which are gone (``removed``):
- rows of added vectors are searched afresh;
- a kept row that listed a removed vector is searched afresh (its k-th
  neighbour may be one it never listed);
- every other kept row can only gain neighbours among the added vectors, so it
  is merged with its exact similarities to them. For an exact table this is
  exact: anything not listed had a similarity below the k-th listed, and still does.
When the added plus re-searched rows are more than a quarter of the index, the
whole table is recomputed, which is then cheaper.

The file is one NumPy ``.npy`` of a structured dtype (no pickling), sorted by id,
written to a temporary file and renamed into place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from encoder.atomic import atomic_writer

from .layout import NEIGHBOURS_K

log = logging.getLogger(__name__)

#: Recompute everything when more than this fraction of rows would be searched again.
FULL_FRACTION = 0.25
_SEARCH_CHUNK = 4096
_MERGE_FLOATS = 1 << 24  # similarities held at once while merging (64 MiB)
# Odd 64-bit multipliers for the fingerprint, fixed so fingerprints survive restarts.
_FP_WEIGHTS = (np.random.default_rng(0x100CA11CE).integers(1, 2**63, size=4096, dtype=np.uint64) * 2 + 1).astype(
    np.uint64
)


def table_dtype(k: int) -> np.dtype:
    """One row: the image's id, its vector's fingerprint, neighbour ids (-1 = none), similarities."""
    return np.dtype([("id", "<i8"), ("fp", "<u8"), ("nbr", "<i8", (k,)), ("sim", "<f4", (k,))])


def member(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Which of `ids` are in `sorted_ids` (ascending): a binary search each, not a sort of both
    (``np.isin``), so asking about a few ids of a large set costs a few microseconds."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not len(sorted_ids):
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


#: Rows scored at a time by an exact scan (:func:`top_k_blocks`): 32,768 x 240 float32 = 31 MB, so a
#: scan of every stored vector holds a block, not a copy of them.
SCORE_ROWS = 32_768


def top_k_blocks(
    q: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` by inner product of each row of `q` over `blocks` of (ids, vectors), as FAISS
    answers: (similarities, ids), each (len(q), k), best first (a tie by id, so answers repeat),
    padded with -inf / -1 where fewer than `k` were scored. Memory stays k + one block's columns."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    best_s = np.empty((len(q), 0), dtype=np.float32)
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for ids, block in blocks:
        scores = q @ np.asarray(block, dtype=np.float32).T  # (nq, rows)
        best_s = np.concatenate([best_s, scores], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
        if best_s.shape[1] > k:  # keep k a row
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s = np.take_along_axis(best_s, keep, axis=1)
            best_i = np.take_along_axis(best_i, keep, axis=1)
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    found = np.full((len(q), k), -1, dtype=np.int64)
    for row in range(len(q)):
        order = np.lexsort((best_i[row], -best_s[row]))
        sims[row, : len(order)] = best_s[row, order]
        found[row, : len(order)] = best_i[row, order]
    return sims, found


def fingerprints(vectors: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint per row of exact float32 bits (integer arithmetic: deterministic)."""
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    if bits.shape[1] > len(_FP_WEIGHTS):
        raise ValueError(f"vectors of {bits.shape[1]} dimensions are more than fingerprints support")
    w = _FP_WEIGHTS[: bits.shape[1]]
    out = np.empty(len(bits), dtype=np.uint64)
    for s in range(0, len(bits), 65536):
        with np.errstate(over="ignore"):
            out[s : s + 65536] = (bits[s : s + 65536].astype(np.uint64) * w).sum(axis=1, dtype=np.uint64)
    return out


@dataclass
class NeighbourStats:
    """What one update did."""

    rows: int = 0
    searched: int = 0  # rows searched afresh
    merged: int = 0  # rows merged with the added vectors
    full: bool = False
    seconds: float = 0.0

    def describe(self) -> str:
        how = "computed" if self.full else f"updated ({self.merged:,} merged)"
        return f"neighbours of {self.rows:,} images {how}, {self.searched:,} searched, {self.seconds:.1f} s"


def update_neighbours(
    ids: np.ndarray,
    vectors: np.ndarray,
    search_index: faiss.Index,
    previous: np.ndarray | None,
    *,
    k: int = NEIGHBOURS_K,
    progress: bool = False,
) -> tuple[np.ndarray, NeighbourStats]:
    """The neighbour table of the vectors (`ids`, `vectors`), reusing `previous` where it still holds.

    `search_index` answers the rows searched afresh; it must hold exactly these vectors
    keyed by these ids (the flat store, or the approximate index built from it).
    """
    t0 = time.perf_counter()
    order = np.argsort(ids, kind="stable")
    ids = np.asarray(ids, dtype=np.int64)[order]
    vectors = np.ascontiguousarray(vectors[order], dtype=np.float32)
    n = len(ids)
    table = np.zeros(n, dtype=table_dtype(k))
    table["id"] = ids
    table["fp"] = fingerprints(vectors) if n else np.zeros(0, np.uint64)
    table["nbr"] = -1
    table["sim"] = -np.inf
    stats = NeighbourStats(rows=n)

    usable = previous is not None and previous.dtype == table.dtype and len(previous) > 0
    search_rows = np.arange(n)
    if usable:
        prev_pos = np.searchsorted(previous["id"], ids)
        prev_pos[prev_pos >= len(previous)] = 0
        kept = (previous["id"][prev_pos] == ids) & (previous["fp"][prev_pos] == table["fp"])
        removed_ids = np.setdiff1d(previous["id"], ids[kept], assume_unique=True)
        kept_rows = np.flatnonzero(kept)
        old = previous[prev_pos[kept_rows]]
        dirty = np.isin(old["nbr"], removed_ids).any(axis=1) if len(removed_ids) else np.zeros(len(old), bool)
        added_rows = np.flatnonzero(~kept)
        to_search = len(added_rows) + int(dirty.sum())
        if to_search <= FULL_FRACTION * n:
            clean_rows = kept_rows[~dirty]
            table["nbr"][clean_rows] = old["nbr"][~dirty]
            table["sim"][clean_rows] = old["sim"][~dirty]
            if len(added_rows):
                _merge(table, clean_rows, vectors, added_rows, k)
                stats.merged = len(clean_rows)
            search_rows = np.sort(np.concatenate([added_rows, kept_rows[dirty]]))
    stats.full = len(search_rows) == n
    if len(search_rows):
        _search(table, search_rows, vectors, search_index, k, progress)
    stats.searched = len(search_rows)
    stats.seconds = time.perf_counter() - t0
    return table, stats


def _search(
    table: np.ndarray, rows: np.ndarray, vectors: np.ndarray, index: faiss.Index, k: int, progress: bool
) -> None:
    """Fill `rows` of the table with a fresh search each (the image itself left out)."""
    want = min(k + 1, int(index.ntotal))
    bar = None
    if progress and len(rows) > 4 * _SEARCH_CHUNK:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), unit="img", desc="neighbours", dynamic_ncols=True)
    for s in range(0, len(rows), _SEARCH_CHUNK):
        chunk = rows[s : s + _SEARCH_CHUNK]
        sims, found = index.search(vectors[chunk], want)
        own = table["id"][chunk][:, None]
        # Leave the image itself out; keep order; pad with -1. Identical copies share a
        # vector, so "itself" is by id, not by position.
        keep = (found != own) & (found >= 0)
        rank = np.cumsum(keep, axis=1) - 1
        keep &= rank < k
        r, c = np.nonzero(keep)
        nbr = np.full((len(chunk), k), -1, dtype=np.int64)
        sim = np.full((len(chunk), k), -np.inf, dtype=np.float32)
        nbr[r, rank[r, c]] = found[r, c]
        sim[r, rank[r, c]] = sims[r, c]
        table["nbr"][chunk] = nbr
        table["sim"][chunk] = sim
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def _merge(table: np.ndarray, rows: np.ndarray, vectors: np.ndarray, added: np.ndarray, k: int) -> None:
    """Merge each of `rows` with its exact similarities to the `added` vectors; keep the best k."""
    added_vecs = vectors[added]
    added_ids = table["id"][added]
    step = max(1, min(65536, _MERGE_FLOATS // (k + len(added))))
    for s in range(0, len(rows), step):
        chunk = rows[s : s + step]
        sims = np.concatenate([table["sim"][chunk], vectors[chunk] @ added_vecs.T], axis=1)
        cand = np.concatenate([table["nbr"][chunk], np.broadcast_to(added_ids, (len(chunk), len(added)))], axis=1)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if sims.shape[1] > k else np.arange(sims.shape[1])[None]
        top_sims = np.take_along_axis(sims, np.broadcast_to(top, (len(chunk), top.shape[1])), axis=1)
        best = np.take_along_axis(top, np.argsort(-top_sims, axis=1, kind="stable"), axis=1)
        best = np.broadcast_to(best, (len(chunk), best.shape[1]))
        out_sims = np.take_along_axis(sims, best, axis=1)
        out_nbr = np.take_along_axis(cand, best, axis=1)
        out_nbr[~np.isfinite(out_sims)] = -1
        table["nbr"][chunk] = out_nbr
        table["sim"][chunk] = out_sims


def write_neighbours(table: np.ndarray, path: str | os.PathLike) -> None:
    """Write the table atomically (temporary file, fsync, rename)."""
    with atomic_writer(path) as fh:
        np.save(fh, table, allow_pickle=False)


def read_neighbours(path: str | os.PathLike, k: int | None = None) -> np.ndarray | None:
    """The table at `path`, memory-mapped; None if it is missing, unreadable or not a table."""
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the neighbour table %s: %s", path, exc)
        return None
    names = table.dtype.names or ()
    if names != ("id", "fp", "nbr", "sim") or table.ndim != 1 or (k is not None and table.dtype != table_dtype(k)):
        log.warning("ignoring the neighbour table %s: not a table of this version", path)
        return None
    return table


def lookup(table: np.ndarray, image_id: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(neighbour ids, similarities) of `image_id`, best first, without the -1 padding; None if absent.

    `ids`: ``table["id"]`` as a contiguous array, if the caller keeps one (a binary search in
    it is ~20x faster than in the strided field of a memory-mapped table).
    """
    if ids is None:
        ids = table["id"]
    pos = int(np.searchsorted(ids, image_id))
    if pos >= len(ids) or int(ids[pos]) != image_id:
        return None
    row = table[pos]
    nbr = row["nbr"]
    valid = nbr >= 0
    return np.asarray(nbr[valid]), np.asarray(row["sim"][valid])
