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


def _family_with_two_edits_that_disagree():
    """An original (0), a brightened copy (1) and a cropped copy (2): both edits pass against
    the original but not against each other. Node 3 is unrelated."""
    vecs = np.array([[1.0, 0.0, 0.0], [0.95, 0.31, 0.0], [0.95, -0.31, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    i, j, s = similar_pairs(vecs, 0.9, k=3)
    return vecs, i, j, s


def test_an_edit_left_out_by_complete_linkage_joins_its_keeper() -> None:
    from search.reports.grouping import attach_to_keepers

    vecs, i, j, s = _family_with_two_edits_that_disagree()
    rule = _cosine_rule(vecs, 0.9)
    assert vecs[1] @ vecs[2] < 0.9 and (vecs[[1, 2]] @ vecs[0] >= 0.9).all()
    core = complete_groups(4, i, j, s, rule)
    assert [sorted(g.tolist()) for g in core] in ([[0, 1]], [[0, 2]])  # one edit is left out
    rank = np.array([0, 1, 2, 3])  # the original is the keeper
    both = attach_to_keepers(core, 4, i, j, s, rule, rank)
    assert [sorted(g.tolist()) for g in both] == [[0, 1, 2]]
    # An image that would outrank the keeper joins only if every member passes against it:
    # the cropped copy, ranked first, fails against the brightened one and stays out.
    groups = attach_to_keepers([np.array([0, 1])], 4, i, j, s, rule, np.array([1, 2, 0, 3]))
    assert sorted(groups[0].tolist()) == [0, 1]


def test_attachment_never_merges_two_groups() -> None:
    from search.reports.grouping import attach_to_keepers

    vecs, i, j, s = _family_with_two_edits_that_disagree()
    rule = _cosine_rule(vecs, 0.9)
    groups = [np.array([0, 1]), np.array([2, 3])]  # as if 2 had its own group already
    out = attach_to_keepers(groups, 4, i, j, s, rule, np.arange(4))
    assert [g.tolist() for g in out] == [[0, 1], [2, 3]]


def test_a_star_holds_what_passes_against_its_best_ranked_member() -> None:
    from search.reports.grouping import star_groups

    vecs, i, j, s = _family_with_two_edits_that_disagree()
    rule = _cosine_rule(vecs, 0.9)
    groups = star_groups(4, i, j, s, rule, np.array([0, 1, 2, 3]))
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 2]]
    # Centred on an edit instead, the other edit does not pass against it and stays out.
    groups = star_groups(4, i, j, s, rule, np.array([1, 0, 2, 3]))
    assert [sorted(g.tolist()) for g in groups] == [[0, 1]]


def test_seeds_come_in_order_of_the_pairs_that_count_toward_it() -> None:
    # Node 3 has the most passing pairs (with 1, 2, 4 and 5) but none of them counts toward the seed
    # order; node 0's pairs with 1 and 2 do (in the report: the pairs the vectors found, where
    # 3's came from hashes that cannot see brightness). Unweighted, 3 seeds first and takes 1
    # and 2 (0 fails against 3); weighted, 0 does and 3 is left with 4 (5 fails against 4).
    passing = {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (3, 4), (3, 5)}
    i = np.array([a for a, _ in sorted(passing)])
    j = np.array([b for _, b in sorted(passing)])
    s = np.full(len(i), 0.95)

    def rule(node: int, others: np.ndarray) -> np.ndarray:
        return np.array([(min(node, int(o)), max(node, int(o))) in passing for o in others])

    plain = complete_groups(6, i, j, s, rule)
    assert sorted(sorted(g.tolist()) for g in plain) == [[1, 2, 3]]
    counts = np.array([(a, b) in {(0, 1), (0, 2), (1, 2)} for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    weighted = complete_groups(6, i, j, s, rule, weight=counts)
    assert sorted(sorted(g.tolist()) for g in weighted) == [[0, 1, 2], [3, 4]]
