"""The near-duplicate report's pieces that need no index: kNN pairs and each image's crowd,
whitening, connected components, tier resolution, the cosine rule of a tier, and the store
round trip the report reads its vectors through."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer import VectorStore
from search.reports import (
    TIERS,
    ReportError,
    Tier,
    connected_components,
    resolve_tiers,
    similar_pairs,
    whiten,
)
from search.reports.rules import cosine_rule, veto_candidates


def test_connected_components_matches_a_plain_union_find() -> None:
    rng = np.random.default_rng(1)
    n = 300
    a, b = rng.integers(0, n, 250), rng.integers(0, n, 250)
    labels = connected_components(n, a, b)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b, strict=True):
        parent[find(int(x))] = find(int(y))
    for x in range(n):
        for y in range(x + 1, min(n, x + 20)):
            assert (labels[x] == labels[y]) == (find(x) == find(y))
    assert all(labels[x] <= x for x in range(n))  # the label is the smallest member


def _clustered(n: int, d: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    for c in range(clusters):  # clusters of 3: two jittered copies of a row
        base = 3 * c
        x[base + 1] = x[base] + 0.01 * rng.standard_normal(d)
        x[base + 2] = x[base] + 0.02 * rng.standard_normal(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_similar_pairs_finds_planted_clusters_exactly_and_through_hnsw() -> None:
    x = _clustered(2000)
    full = x @ x.T
    want = {(i, j) for i, j in zip(*np.nonzero(np.triu(full, 1) >= 0.99), strict=True)}
    i, j, s = similar_pairs(x, 0.99, k=8, batch_size=256)  # several batches
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert np.allclose(s, full[i, j], atol=1e-5) and (i < j).all()
    ids = np.arange(1000, 3000, dtype=np.int64)[::-1].copy()  # ids unrelated to positions
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(x, ids)
    hi, hj, _ = similar_pairs(x, 0.99, k=8, index=hnsw, ids=ids)
    assert set(zip(hi.tolist(), hj.tolist(), strict=True)) == want


def _kth(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k-th most similar row, itself counted (brute force)."""
    return -np.sort(-(x @ x.T), axis=1)[:, k - 1]


def test_crowds_are_each_images_kth_neighbour_exactly_and_through_hnsw() -> None:
    x = _clustered(600)
    crowd = np.empty(len(x), dtype=np.float32)
    for k in (2, 8, 16):
        similar_pairs(x, 0.5, k=k, batch_size=128, crowd=crowd)  # the floor does not touch crowds
        np.testing.assert_allclose(crowd, _kth(x, k), atol=1e-5)
    ids = np.arange(600, dtype=np.int64)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(x.shape[1], 16, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(x, ids)
    similar_pairs(x, -1.0, k=8, index=hnsw, ids=ids, crowd=crowd)
    assert np.mean(np.abs(crowd - _kth(x, 8)) < 1e-5) > 0.95  # approximate: nearly every row exact
    few = np.empty(5, dtype=np.float32)  # fewer images than k: no crowd
    similar_pairs(x[:5], -1.0, k=16, crowd=few)
    assert (few == -1).all()


def test_whitening_removes_the_common_component() -> None:
    rng = np.random.default_rng(0)
    common = rng.standard_normal(16)
    x = common + 0.05 * rng.standard_normal((500, 16)) * np.linspace(0.2, 3, 16)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    assert (x[:50] @ x[50:100].T).mean() > 0.95  # raw: every pair looks alike
    w = whiten(x)
    assert np.allclose(np.linalg.norm(w, axis=1), 1, atol=1e-5)
    assert abs((w[:50] @ w[50:100].T).mean()) < 0.05  # whitened: unrelated pairs near 0
    assert whiten(x[:10]).shape == (10, 16)  # too few to trust a covariance: centred only


def test_resolve_tiers() -> None:
    assert resolve_tiers(None) == TIERS == resolve_tiers("all")
    assert resolve_tiers(TIERS[1].name) == TIERS[:2]
    custom = resolve_tiers(0.5)
    assert custom[: len(TIERS)] == TIERS and custom[-1].threshold == 0.5
    assert resolve_tiers(TIERS[0].threshold) == TIERS[:1]
    with pytest.raises(ReportError, match="unknown tier"):
        resolve_tiers("nearly")
    with pytest.raises(ReportError, match="cosine"):
        resolve_tiers(1.5)


def test_default_tiers_nest() -> None:
    # A group is shown at the strictest tier where it holds together, which assumes every
    # pair of a stricter tier also passes each looser one: looser cosine, wider hash distance.
    for strict, loose in zip(TIERS, TIERS[1:], strict=False):
        assert loose.threshold <= strict.threshold
        assert loose.hamming is not None and strict.hamming is not None and loose.hamming >= strict.hamming


def test_the_crowd_rule() -> None:
    tier = Tier("similar", 0.8, crowd_margin=0.4)
    s = np.array([0.85, 0.85, 0.85, 0.95, 0.75])
    crowd_a = np.array([0.6, 0.3, 0.3, 0.9, -1.0])  # a dense region; a quiet one; ...
    crowd_b = np.array([0.3, 0.3, 0.5, 0.9, -1.0])
    # the denser end decides; a stricter tier's cosine admits whatever the crowd; the
    # threshold still holds for an image with no crowd (fewer than k images)
    assert cosine_rule(tier, s, crowd_a, crowd_b, stricter=0.9).tolist() == [False, True, False, True, False]
    assert cosine_rule(tier, s, crowd_a, crowd_b).tolist() == [False, True, False, False, False]
    plain = Tier("similar", 0.8)
    assert cosine_rule(plain, s, crowd_a, crowd_b).tolist() == [True, True, True, True, False]
    # a pair the stricter tier vetoes gets no pass from its cosine: its crowd decides
    vetoed = np.array([False, False, False, True, False])
    assert cosine_rule(tier, s, crowd_a, crowd_b, 0.9, vetoed).tolist() == [False, True, False, False, False]
    quiet = np.zeros(5)
    assert cosine_rule(tier, s, quiet, quiet, 0.9, vetoed).tolist() == [True, True, True, True, False]


def test_veto_candidates_are_the_stricter_tiers_cosine_matches_on_one_canvas_that_hash_alike() -> None:
    up = Tier("near-duplicate", 0.9, hamming=8, crop_hamming=8, detail_veto=True)
    s = np.array([0.95, 0.95, 0.95, 0.85, 0.95])
    d = np.array([2, 2, 12, 2, 6])  # hash distances of the whole pictures
    dc = np.array([20, 20, 20, 20, 4])  # ... and of the best crop window (the last: a crop)
    same = np.array([True, False, True, True, True])
    assert veto_candidates(up, s, d, dc, same).tolist() == [True, False, False, False, False]
    assert veto_candidates(Tier("near-duplicate", 0.9, hamming=8), s, d, dc, same) is None
    assert veto_candidates(None, s, d, dc, same) is None


def test_a_store_of_synthetic_vectors_round_trips() -> None:
    """all_vectors, as the report reads them, gives back what was added (guards the raw pointer read)."""
    x = _clustered(50, clusters=5)
    store = VectorStore(16)
    store.add(np.arange(10, 60), x)
    ids, vecs = store.all_vectors()
    assert (ids == np.arange(10, 60)).all() and np.allclose(vecs, x)
