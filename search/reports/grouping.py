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
    weight: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Disjoint groups (arrays of node numbers) of `n` nodes, from the passing pairs (i[e], j[e])
    with `closeness[e]` (higher = closer): every two members of a group pass `passes`. `start`:
    groups that are kept whole (a stricter tier's), merged with others only as a whole.
    `weight`: per pair, whether it counts toward a unit's place in the seed order (default:
    every pair)."""
    unit, m, by_unit, bounds = _units(n, start)

    def members(u: int) -> np.ndarray:
        return by_unit[bounds[u] : bounds[u + 1]]

    a, b, c = _unit_pairs(unit, i, j, closeness)
    if weight is None:
        w = np.ones(len(a), dtype=bool)
    else:  # as _unit_pairs lists them: the pairs across units, both ways round
        cross = unit[np.asarray(i, np.int64)] != unit[np.asarray(j, np.int64)]
        w = np.concatenate([weight[cross], weight[cross]])
    # Each pair of units once, at its closest pair of images; then by unit, closest first.
    best = np.lexsort((-c, b, a))
    a, b, c, w = a[best], b[best], c[best], w[best]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    # a pair of units counts when any of its image pairs does (reduceat needs at least one pair)
    w = np.maximum.reduceat(w, np.flatnonzero(first)) if len(a) else w[first]
    a, b, c = a[first], b[first], c[first]
    order = np.lexsort((b, -c, a))
    a, b, w = a[order], b[order], w[order]
    starts = np.searchsorted(a, np.arange(m + 1))
    degree = np.diff(starts)
    counted = np.bincount(a[w], minlength=m)  # == degree without `weight`
    # Most linked units first (by the pairs that count, then by all); ties by unit number, so the
    # result does not depend on pair order.
    seeds = np.lexsort((np.arange(m), -degree, -counted))
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


def star_groups(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    closeness: np.ndarray,
    passes: Rule,
    rank: np.ndarray,
    start: Sequence[np.ndarray] = (),
) -> list[np.ndarray]:
    """Disjoint keeper-centred groups of `n` nodes: every member passes `passes` against the
    group's keeper, the member of lowest `rank` (the one a user would keep). Members need
    not pass against each other, which is what lets a cropped copy and a brightened copy of
    one original share its group; it never chains, because nothing joins through anyone
    but the keeper.

    Units (single nodes, or the `start` groups, kept whole) are taken in order of their best
    node's rank; an untaken unit becomes a keeper and takes the untaken units it has
    passing pairs with, closest first, when every node of theirs passes against it. Units
    of a better rank were taken first, so the keeper is always its group's best-ranked
    member. Cost: one rule call per passing pair, n*k at most."""
    unit, m, by_unit, bounds = _units(n, start)
    rank = np.asarray(rank, np.int64)
    centre = np.full(m, -1, dtype=np.int64)  # each unit's best-ranked node
    for node in np.argsort(rank, kind="stable")[::-1]:
        centre[unit[node]] = node

    a, b, c = _unit_pairs(unit, i, j, closeness)
    order = np.lexsort((b, -c, a))  # by unit, closest first
    a, b = a[order], b[order]
    starts = np.searchsorted(a, np.arange(m + 1))
    linked = np.diff(starts) > 0
    taken = np.zeros(m, dtype=bool)
    groups: list[np.ndarray] = []
    for u in np.argsort(rank[centre], kind="stable") if m else []:
        if taken[u]:
            continue
        taken[u] = True
        group = by_unit[bounds[u] : bounds[u + 1]].tolist()
        if not linked[u]:
            if len(group) > 1:
                groups.append(np.asarray(group, dtype=np.int64))
            continue
        keeper = int(centre[u])
        for v in b[starts[u] : starts[u + 1]]:
            if taken[v]:
                continue
            inner = by_unit[bounds[v] : bounds[v + 1]]
            if passes(keeper, inner).all():
                group.extend(inner.tolist())
                taken[v] = True
        if len(group) > 1:
            groups.append(np.asarray(group, dtype=np.int64))
    return groups


def attach_to_keepers(
    groups: list[np.ndarray],
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    closeness: np.ndarray,
    passes: Rule,
    rank: np.ndarray,
) -> list[np.ndarray]:
    """`groups` (from :func:`complete_groups`) with each image left out of every group added
    to the group of its closest linked neighbour whose keeper (the member of lowest `rank`)
    it passes against; an image that would outrank the keeper joins only if every member
    passes against it, and becomes the keeper. Groups are never merged, so two families that hash alike stay apart;
    an image that missed its family because it fails against one member (a crop against a
    brightened copy) joins it through the keeper. Cost: at most one rule call per passing pair."""
    owner = np.full(n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        owner[members] = g
    rank = np.asarray(rank, np.int64)
    keeper = [int(m[np.argmin(rank[m])]) for m in groups]
    a, b = np.asarray(i, np.int64), np.asarray(j, np.int64)
    c = np.asarray(closeness, np.float64)
    a, b, c = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([c, c])
    lone = (owner[a] < 0) & (owner[b] >= 0)  # a left out, b in a group
    a, b, c = a[lone], b[lone], c[lone]
    order = np.lexsort((b, -c, a))
    a, b = a[order], b[order]
    added: list[list[int]] = [[] for _ in groups]
    tried: set[tuple[int, int]] = set()
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if owner[x] >= 0:
            continue
        g = int(owner[y])
        if (x, g) in tried:
            continue
        tried.add((x, g))
        if rank[x] > rank[keeper[g]]:
            ok = bool(passes(keeper[g], np.array([x]))[0])
        else:  # it would be the keeper: everyone must pass against it
            ok = bool(passes(x, np.concatenate([groups[g], np.asarray(added[g], np.int64)])).all())
            if ok:
                keeper[g] = x
        if ok:
            owner[x] = g
            added[g].append(x)
    return [
        np.concatenate([m, np.asarray(extra, np.int64)]) if extra else m for m, extra in zip(groups, added, strict=True)
    ]


def _units(n: int, start: Sequence[np.ndarray]) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """(node -> unit 0..m-1, m, nodes sorted by unit, each unit's bounds in that order): single
    nodes, and each of `start` as one unit."""
    unit = np.arange(n, dtype=np.int64)
    for u, g in enumerate(start):
        unit[np.asarray(g, np.int64)] = n + u
    _, unit = np.unique(unit, return_inverse=True)
    m = int(unit.max()) + 1 if n else 0
    by_unit = np.argsort(unit, kind="stable")
    return unit, m, by_unit, np.searchsorted(unit[by_unit], np.arange(m + 1))


def _unit_pairs(
    unit: np.ndarray, i: np.ndarray, j: np.ndarray, closeness: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The node pairs as pairs of different units, both ways round, with their closeness."""
    a, b = unit[np.asarray(i, np.int64)], unit[np.asarray(j, np.int64)]
    c = np.asarray(closeness, np.float64)
    cross = a != b
    a, b, c = a[cross], b[cross], c[cross]
    return np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([c, c])
