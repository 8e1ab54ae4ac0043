"""Near-duplicate pairs at scale: whitening, kNN pairs without an n x n matrix, and
connected components without a Python loop over pairs."""

from __future__ import annotations

import faiss
import numpy as np

from encoder.calibration import fit_whitening
from indexer.delta import inner_index

#: Neighbours asked for per image when looking for near-duplicate pairs (itself included).
DEFAULT_K = 16


def whiten(vectors: np.ndarray) -> np.ndarray:
    """Centre `vectors` on their mean, whiten with the Ledoit-Wolf-shrunk covariance, L2-normalise
    (:mod:`encoder.calibration`).

    An autoencoder's vectors share a large common component, so the raw cosine of two
    unrelated images is already high; whitening with the collection's own statistics
    spreads them out (measured in bench/near_duplicates.py). The shrinkage is estimated from
    the vectors themselves: on a small folder whitening fades into plain centring instead of
    amplifying the noise of a covariance it cannot estimate.
    """
    return fit_whitening(vectors).apply(vectors)


def similar_pairs(
    vectors: np.ndarray,
    min_similarity: float,
    k: int = DEFAULT_K,
    *,
    index: faiss.Index | None = None,
    ids: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    batch_size: int = 8192,
    ef_search: int | None = None,
    crowd: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cosine of `vectors`), i < j positions, among each row's `k` nearest
    neighbours with cosine >= `min_similarity`. Never builds an n x n matrix.

    Without `index`: exact kNN over `vectors` in BLAS batches. With `index` (an HNSW/IVF
    keyed by `ids`, holding `queries`, e.g. the raw vectors of which `vectors` are the
    whitened form), the index proposes the neighbours and `vectors` scores them. For an
    HNSW index, `ef_search` (default: :func:`report_ef_search`) sets the search breadth.

    `crowd` (an array of n floats), when given, is filled with each row's crowd: the cosine of
    its k-th nearest neighbour, itself counted, as the search found them; -1 when fewer than
    `k` were found (a folder of fewer than `k` images has no crowd).
    """
    n = len(vectors)
    if crowd is not None:
        crowd[:] = -1.0
    wanted = k
    k = max(2, min(k, n))
    if index is not None:
        if ids is None:
            raise ValueError("an index needs the ids of the vectors")
        order = np.argsort(ids)
        sorted_ids = ids[order]
        queries = vectors if queries is None else queries
        inner = inner_index(index)  # below an id map, or a delta's base
        ef = ef_search or report_ef_search(k)
        params = faiss.SearchParametersHNSW(efSearch=ef) if hasattr(inner, "hnsw") else None
    parts_i, parts_j, parts_s = [], [], []
    for start in range(0, n, batch_size):
        q = np.ascontiguousarray(vectors[start : start + batch_size])
        rows = np.arange(start, start + len(q))[:, None]
        if index is None:
            sims, nbr = faiss.knn(q, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            _, found = index.search(np.ascontiguousarray(queries[start : start + batch_size]), k, params=params)
            pos = np.searchsorted(sorted_ids, found).clip(0, n - 1)
            known = (found >= 0) & (sorted_ids[pos] == found)  # ids not in `ids` (copies) are dropped
            nbr = np.where(known, order[pos], -1)
            sims = np.einsum("qd,qkd->qk", q, vectors[np.maximum(nbr, 0)])
        if crowd is not None and k == wanted:
            # exact kNN lists each row's neighbours most similar first; an index orders them by
            # the raw vectors, not these, so its re-scored ones are sorted
            ranked = sims if index is None else -np.sort(-np.where(nbr >= 0, sims, -np.inf), axis=1)
            ranked = ranked[:, k - 1]
            crowd[start : start + len(q)] = np.where(np.isfinite(ranked), ranked, -1.0)
        keep = (nbr >= 0) & (nbr != rows) & (sims >= min_similarity)
        i = np.broadcast_to(rows, nbr.shape)[keep]
        j = nbr[keep]
        parts_i.append(np.minimum(i, j))
        parts_j.append(np.maximum(i, j))
        parts_s.append(sims[keep].astype(np.float32))
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, s = np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s)
    _, first = np.unique(i * n + j, return_index=True)  # each pair once (found from both ends)
    return i[first], j[first], s[first]


def hash_pairs(
    codes: np.ndarray,
    max_distance: int,
    k: int = DEFAULT_K,
    *,
    valid: np.ndarray | None = None,
    exact_max: int = 20_000,
    batch_size: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j positions, among each 64-bit hash's `k` nearest by Hamming distance
    that differ in at most `max_distance` bits. `valid`: which codes take part (a missing hash
    is no one's neighbour). Never builds an n x n matrix.

    Why a second neighbour search: the vectors' kNN proposes the pairs the tiers judge, and a
    learned vector can put an edit far from its original that the hash sees as the same
    picture. On the cross-corpus benchmark a greyscale copy hashed 0-2 bits from its original
    (the hash is of grey levels) at a whitened cosine of about 0.05, below a hundred other
    images: 29 of 80 wallpaper pairs and 24 of 150 Tux Paint pairs were never proposed.

    Exact (FAISS ``IndexBinaryFlat``) up to `exact_max` codes. Above, multi-index hashing
    (``IndexBinaryMultiHash``, four tables of 16 bits): two hashes within 3 bits share one
    16-bit quarter exactly, so every such pair is found; pairs further apart only when a quarter
    matches. Measured on 1.1M random hashes with planted copies 0-4 bits away: 11 s, 98% of
    the copies found; the exact search took 77 s at 220k and a binary IVF 322 s at 1.1M, and
    flipping one bit per quarter (all within 7 bits) 569 s (docs/benchmarks.md)."""
    codes = np.asarray(codes, dtype=np.int64)
    where = np.arange(len(codes)) if valid is None else np.flatnonzero(valid)
    n = len(where)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = max(2, min(k, n))
    packed = np.ascontiguousarray(codes[where].astype("<i8").view(np.uint8).reshape(n, 8))
    index: faiss.IndexBinary = faiss.IndexBinaryFlat(64) if n <= exact_max else faiss.IndexBinaryMultiHash(64, 4, 16)
    index.add(packed)
    parts_i, parts_j = [], []
    for start in range(0, n, batch_size):
        dist, nbr = index.search(packed[start : start + batch_size], k)
        rows = np.arange(start, start + len(dist))[:, None]
        keep = (nbr >= 0) & (nbr != rows) & (dist <= max_distance)
        a, b = np.broadcast_to(rows, nbr.shape)[keep], nbr[keep]
        parts_i.append(where[np.minimum(a, b)])
        parts_j.append(where[np.maximum(a, b)])
    i, j = np.concatenate(parts_i), np.concatenate(parts_j)
    _, first = np.unique(i * len(codes) + j, return_index=True)  # each pair once (found from both ends)
    return i[first], j[first]


def union_pairs(
    i: np.ndarray, j: np.ndarray, s: np.ndarray, extra_i: np.ndarray, extra_j: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (i, j, cosine) with the pairs (extra_i, extra_j) that are not among them yet,
    each scored as the cosine of its `vectors` (both lists hold i < j)."""
    n = len(vectors)
    new = ~np.isin(extra_i * n + extra_j, i * n + j)
    a, b = extra_i[new], extra_j[new]
    extra_s = np.einsum("pd,pd->p", vectors[a], vectors[b]).astype(np.float32) if len(a) else np.zeros(0, np.float32)
    return np.concatenate([i, a]), np.concatenate([j, b]), np.concatenate([s.astype(np.float32), extra_s])


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (its smallest member) of each of `n` nodes, given edges a[e]-b[e].

    Vectorised union-find: hook each edge's larger root under its smaller one, then
    pointer-jump until every node points at its root; repeat until no edge spans two roots.
    """
    parent = np.arange(n)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            break
        lo, hi = np.minimum(ra[split], rb[split]), np.maximum(ra[split], rb[split])
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        a, b = a[split], b[split]
    return parent


def report_ef_search(k: int) -> int:
    """HNSW search breadth for the report's all-images kNN: 3k, at least 32.

    Narrower than the server's (the index's efSearch, 96): a near-duplicate is so close
    that a narrow search finds it, and the pair is looked for from both ends. On 1M
    synthetic vectors, k=16: efSearch 48 finds 98.8% of planted copies from one end
    (96: 99.5%) at half the time (bench/reports_scale.py, docs/benchmarks.md).
    """
    return max(32, 3 * k)
