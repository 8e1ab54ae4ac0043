"""Near-duplicate groups without chaining (search/reports/grouping.py)."""

from __future__ import annotations

import numpy as np

from search.reports.grouping import complete_groups
from search.reports.pairs import connected_components, similar_pairs


def _cosine_rule(vecs: np.ndarray, threshold: float):
    def rule(node: int, others: np.ndarray) -> np.ndarray:
        return vecs[others] @ vecs[node] >= threshold

    return rule


def test_a_chain_of_look_alikes_is_not_one_group() -> None:
    # Points on an arc, each 10 degrees from the next: neighbours pass at cos >= 0.98, the ends
    # are 90 degrees apart. Connected components make one group of all ten; complete linkage
    # never puts two images that do not pass together.
    angles = np.radians(np.arange(10) * 10.0)
    vecs = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    i, j, s = similar_pairs(vecs, 0.98, k=3)
    assert len(np.unique(connected_components(10, i, j))) == 1  # the chain the old rule made
    groups = complete_groups(10, i, j, s, _cosine_rule(vecs, 0.98))
    assert groups and max(len(g) for g in groups) == 2
    for g in groups:
        sims = vecs[g] @ vecs[g].T
        assert sims.min() >= 0.98


def test_every_two_members_pass_and_groups_are_disjoint() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 24))
    vecs = np.concatenate([c + rng.normal(scale=0.15, size=(8, 24)) for c in centres])
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    threshold = 0.95
    i, j, s = similar_pairs(vecs, threshold, k=12)
    groups = complete_groups(len(vecs), i, j, s, _cosine_rule(vecs, threshold))
    seen = np.concatenate(groups)
    assert len(seen) == len(np.unique(seen))  # disjoint
    for g in groups:
        assert len(g) > 1
        sims = vecs[g] @ vecs[g].T
        assert sims.min() >= threshold - 1e-6
    # Families that hold together are found whole: most images are grouped with their family.
    family = np.repeat(np.arange(30), 8)
    grouped_with_family = sum(int((family[g] == family[g[0]]).all()) for g in groups)
    assert grouped_with_family >= 0.9 * len(groups)


def test_the_result_does_not_depend_on_the_order_of_the_pairs() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(60, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    i, j, s = similar_pairs(vecs, 0.6, k=8)
    a = complete_groups(60, i, j, s, _cosine_rule(vecs, 0.6))
    p = rng.permutation(len(i))
    b = complete_groups(60, i[p], j[p], s[p], _cosine_rule(vecs, 0.6))
    assert [g.tolist() for g in a] == [g.tolist() for g in b]
    assert complete_groups(60, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), None) == []
