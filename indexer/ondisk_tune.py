"""Search effort of the on-disk index (indexer/ondisk.py): nprobe and re-rank depth, tuned together.

A query's recall is limited by two things: the lists probed (`nprobe`: a true neighbour in a list
not probed is never seen) and the candidates re-ranked (`rerank` x k by PQ score: a true neighbour
whose 60-byte code scores below the cut is never re-ranked). Tuning nprobe alone was not enough: at
10M autoencoder-like vectors recall@10 stopped at 0.81 from nprobe 32 to 256 with 80 candidates
(docs/benchmarks.md, "10M measured"), and the ladder ran to nprobe 256 (p50 64 ms) for nothing.

So the ladder walks (nprobe, rerank) pairs and keeps the cheapest pair that reaches the target.
One search per nprobe measures every depth: FAISS returns candidates sorted by PQ distance, so the
candidates of a shallower re-rank are a prefix of the deepest one's, and re-ranking each prefix
exactly gives the recall at that depth. A pair's cost is estimated in codes scanned (nprobe x the
mean list length) plus CANDIDATE_COST per candidate re-ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from .ondisk import RERANK, GetVectors, candidates

#: Re-rank depths tried, candidates per result asked for (80 to 1,280 at k = 10). RERANK (8) first:
#: where it is enough, the index answers as it did before this was tuned.
RERANK_LADDER = (RERANK, 16, 32, 64, 128)
#: One re-ranked candidate costs about as much as scanning this many PQ codes: a candidate is a
#: random read of a 960-byte row and a dot product (~1 us with the row in the page cache, more
#: from disk), a 60-byte code ~0.09 us (both measured at 1M, docs/benchmarks.md).
CANDIDATE_COST = 16.0
#: Recall gained by the next nprobe (at the deepest re-rank) below this: more lists give nothing.
PLATEAU = 0.002


@dataclass
class Tuned:
    """The chosen effort and what was measured on the way (for the manifest's reason and benches)."""

    nprobe: int
    rerank: int
    recall: float
    #: (nprobe, rerank, recall) of every pair measured, in the order measured.
    measured: list[tuple[int, int, float]] = field(default_factory=list)


def cost(nprobe: int, rerank: int, k: int, ntotal: int, nlist: int) -> float:
    """Estimated work of one query, in PQ codes scanned (see CANDIDATE_COST)."""
    return nprobe * ntotal / max(1, nlist) + CANDIDATE_COST * candidates(k, rerank, ntotal)


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    truth: Sequence[set[int]],
    get_vectors: GetVectors,
    k: int,
    *,
    target: float,
    nprobe_ladder: Sequence[int],
    rerank_ladder: Sequence[int] = RERANK_LADDER,
    exclude: np.ndarray | None = None,
) -> Tuned:
    """The cheapest (nprobe, rerank) whose recall@`k` on `queries` against `truth` (each row's true
    top-`k` ids) reaches `target`; if none does, the cheapest pair within PLATEAU of the best recall.
    `exclude[i]` (a by-id query's own id) is searched for as one more result and left out, as the
    engine does. Leaves `index` searching at the chosen nprobe."""
    ivf = faiss.extract_index_ivf(index)
    ntotal, nlist = int(index.ntotal), int(ivf.nlist)
    want = k + (exclude is not None)
    ladder = [p for p in nprobe_ladder if p <= nlist] or [nlist]
    reranks = sorted(set(rerank_ladder))
    deepest = candidates(want, reranks[-1], ntotal)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    measured: list[tuple[int, int, float]] = []
    best_deep = -1.0
    for nprobe in ladder:
        ivf.nprobe = nprobe
        _, cand = index.search(q, deepest)  # (nq, deepest), best PQ score first
        recalls = _recall_by_depth(q, cand, truth, get_vectors, k, want, reranks, ntotal, exclude)
        measured += [(nprobe, r, rec) for r, rec in zip(reranks, recalls, strict=True)]
        if recalls[-1] < best_deep + PLATEAU:
            break  # more lists no longer help even at the deepest re-rank
        best_deep = max(best_deep, recalls[-1])
        reached = [cost(p, r, want, ntotal, nlist) for p, r, rec in measured if rec >= target]
        nxt = ladder.index(nprobe) + 1
        if reached and (nxt == len(ladder) or min(reached) <= cost(ladder[nxt], reranks[0], want, ntotal, nlist)):
            break  # nothing further up the ladder can be cheaper
    hit = [m for m in measured if m[2] >= target]
    if not hit:
        top = max(m[2] for m in measured)
        hit = [m for m in measured if m[2] >= top - PLATEAU]
    nprobe, rerank, recall = min(hit, key=lambda m: (cost(m[0], m[1], want, ntotal, nlist), -m[2]))
    ivf.nprobe = nprobe
    return Tuned(nprobe, rerank, recall, measured)


def _recall_by_depth(
    q: np.ndarray,
    cand: np.ndarray,
    truth: Sequence[set[int]],
    get_vectors: GetVectors,
    k: int,
    want: int,
    reranks: Sequence[int],
    ntotal: int,
    exclude: np.ndarray | None,
) -> list[float]:
    """Recall@`k` after an exact re-rank of the first candidates(want, r) of each row of `cand`,
    for each r of `reranks` (what ondisk.search answers at that depth)."""
    depths = [candidates(want, r, ntotal) for r in reranks]
    hits = np.zeros(len(reranks))
    for row in range(len(q)):
        c = cand[row][cand[row] >= 0]
        sims = get_vectors(c) @ q[row] if len(c) else np.zeros(0, np.float32)
        for j, depth in enumerate(depths):
            top = c[np.argsort(-sims[:depth], kind="stable")[:want]]
            if exclude is not None:
                top = top[top != exclude[row]]
            hits[j] += len(truth[row] & set(top[:k].tolist()))
    return [round(float(h) / (len(q) * k), 4) for h in hits]
