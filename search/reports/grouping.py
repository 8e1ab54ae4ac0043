"""Near-duplicate groups without chaining.

Connected components of passing pairs chain: A looks like B, B like C, ... and a group
ends up holding images that are nothing alike (on the 169 sample images one "similar"
component held 147 of them, members at cosine -0.85 to the keeper). A user deletes
files because of these groups, so every pair inside a group must pass the tier's rule
itself (complete linkage), not only through a chain; then whichever member is suggested
as the keeper, every other member passes against it.

Exact complete-linkage clustering costs n^2. This is its greedy form over the kNN pairs,
which keeps the cost at n*k: units (single images, or the groups of a stricter tier) are
taken as seeds in order of how many passing pairs they have (the centre of a family of
edits has the most), and a seed's group grows from the units it has passing pairs with,
closest first, each admitted only if every one of its images passes against every image
already in. Admission checks compute the rule directly from the vectors and hashes, so a
pair need not have been among the kNN pairs to count.

Tiers nest: a looser tier starts from the stricter tier's groups and only merges them, so
an image grouped at a strict tier is never split from its group at a looser one, and a
looser tier finds at least what a stricter one found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: passes(node, others) -> bool array: whether `node` and each of `others` pass the rule.
Rule = Callable[[int, np.ndarray], np.ndarray]


def complete_groups(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    closeness: np.ndarray,
    passes: Rule,
    start: Sequence[np.ndarray] = (),
) -> list[np.ndarray]:
    """Disjoint groups (arrays of node numbers) of `n` nodes, from the passing pairs (i[e], j[e])
    with `closeness[e]` (higher = closer): every two members of a group pass `passes`. `start`:
    groups that are kept whole (a stricter tier's), merged with others only as a whole."""
    unit = np.arange(n, dtype=np.int64)  # node -> the unit it belongs to
    for u, g in enumerate(start):
        unit[np.asarray(g, np.int64)] = n + u
    _, unit = np.unique(unit, return_inverse=True)  # units numbered 0..m-1
    m = int(unit.max()) + 1 if n else 0
    by_unit = np.argsort(unit, kind="stable")
    bounds = np.searchsorted(unit[by_unit], np.arange(m + 1))

    def members(u: int) -> np.ndarray:
        return by_unit[bounds[u] : bounds[u + 1]]

    a, b = unit[np.asarray(i, np.int64)], unit[np.asarray(j, np.int64)]
    c = np.asarray(closeness, np.float64)
    cross = a != b
    a, b, c = a[cross], b[cross], c[cross]
    a, b, c = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([c, c])
    # Each pair of units once, at its closest pair of images; then by unit, closest first.
    best = np.lexsort((-c, b, a))
    a, b, c = a[best], b[best], c[best]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, c = a[first], b[first], c[first]
    order = np.lexsort((b, -c, a))
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(m + 1))
    degree = np.diff(starts)
    # Most linked units first; ties by unit number, so the result does not depend on pair order.
    seeds = np.lexsort((np.arange(m), -degree))
    seeds = seeds[(degree[seeds] > 0) | (np.diff(bounds)[seeds] > 1)]  # lone images make no group
    taken = np.zeros(m, dtype=bool)
    groups: list[np.ndarray] = []
    for seed in seeds:
        if taken[seed]:
            continue
        taken[seed] = True
        group = members(seed).tolist()
        # A lone seed and a lone candidate linked to it are a passing pair already: only the
        # members admitted since need checking (this skips most calls on a large collection).
        lone = len(group) == 1
        for cand in b[starts[seed] : starts[seed + 1]]:
            if taken[cand]:
                continue
            inner = members(cand)
            if lone and len(inner) == 1:
                others = np.asarray(group[1:])
                ok = not len(others) or passes(int(inner[0]), others).all()
            else:
                now = np.asarray(group)
                ok = all(passes(int(x), now).all() for x in inner)
            if ok:
                group.extend(inner.tolist())
                taken[cand] = True
        if len(group) > 1:
            groups.append(np.asarray(group, dtype=np.int64))
    return groups
