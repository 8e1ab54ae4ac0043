"""Near-duplicate pairs at scale: whitening, kNN pairs without an n x n matrix, and
connected components without a Python loop over pairs."""

from __future__ import annotations

import faiss
import numpy as np

from encoder.calibration import fit_whitening

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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cosine of `vectors`), i < j positions, among each row's `k` nearest
    neighbours with cosine >= `min_similarity`. Never builds an n x n matrix.

    Without `index`: exact kNN over `vectors` in BLAS batches. With `index` (an HNSW/IVF
    keyed by `ids`, holding `queries`, e.g. the raw vectors of which `vectors` are the
    whitened form), the index proposes the neighbours and `vectors` scores them. For an
    HNSW index, `ef_search` (default: :func:`report_ef_search`) sets the search breadth.
    """
    n = len(vectors)
    k = max(2, min(k, n))
    if index is not None:
        if ids is None:
            raise ValueError("an index needs the ids of the vectors")
        order = np.argsort(ids)
        sorted_ids = ids[order]
        queries = vectors if queries is None else queries
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)
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
