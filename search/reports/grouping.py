"""Near-duplicate groups without chaining.

Connected components of passing pairs chain: A looks like B, B like C, ... and a group
ends up holding images that are nothing alike (on the 169 sample images one "similar"
component held 147 of them, members at cosine -0.85 to the keeper). A user deletes
files because of these groups, so every pair inside a group must pass the tier's rule
itself (complete linkage), not only through a chain; then whichever member is suggested
as the keeper, every other member passes against it.

Exact complete-linkage clustering costs n^2. This is its greedy form over the kNN pairs,
which keeps the cost at n*k: seeds are taken in order of how many passing pairs they have
(the centre of a family of edits has the most), and a seed's group grows from its own
passing neighbours, closest first, each admitted only if it passes against every member
already in. Admission checks compute the rule directly from the vectors and hashes, so a
pair need not have been among the kNN pairs to count. Groups are therefore at most
``k`` images (a seed's neighbours), disjoint, and never chained.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: passes(node, others) -> bool array: whether `node` and each of `others` pass the rule.
Rule = Callable[[int, np.ndarray], np.ndarray]


def complete_groups(n: int, i: np.ndarray, j: np.ndarray, closeness: np.ndarray, passes: Rule) -> list[np.ndarray]:
    """Disjoint groups (arrays of node numbers, seed first) of `n` nodes, from the passing pairs
    (i[e], j[e]) with `closeness[e]` (higher = closer): every two members of a group pass `passes`."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if not len(i):
        return []
    a, b = np.concatenate([i, j]), np.concatenate([j, i])
    c = np.concatenate([closeness, closeness])
    order = np.lexsort((b, -c, a))  # by node, then its closest neighbours first
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(n + 1))
    degree = np.diff(starts)
    # Most passing pairs first; ties by node number, so the result does not depend on pair order.
    seeds = np.lexsort((np.arange(n), -degree))[: int((degree > 0).sum())]
    taken = np.zeros(n, dtype=bool)
    groups: list[np.ndarray] = []
    for seed in seeds:
        if taken[seed]:
            continue
        candidates = b[starts[seed] : starts[seed + 1]]
        candidates = candidates[~taken[candidates]]
        if not len(candidates):
            continue
        members = [int(seed)]
        for cand in candidates:
            if passes(int(cand), np.asarray(members)).all():
                members.append(int(cand))
        if len(members) > 1:
            group = np.asarray(members, dtype=np.int64)
            taken[group] = True
            groups.append(group)
    return groups
