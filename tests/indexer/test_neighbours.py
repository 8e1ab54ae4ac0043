"""The precomputed neighbour table: exact against brute force, kept exact by incremental updates."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.layout import NEIGHBOURS
from indexer.neighbours import (
    fingerprints,
    lookup,
    read_neighbours,
    table_dtype,
    update_neighbours,
    write_neighbours,
)
from indexer.publish import publish
from indexer.vectors import VectorStore, plan_index

K = 8


def clustered(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Unit vectors in a few clusters, so neighbour lists are not a toss-up."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    x = centres[rng.integers(0, 6, n)] + 0.6 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def flat(ids: np.ndarray, vecs: np.ndarray) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1]))
    index.add_with_ids(vecs, ids.astype(np.int64))
    return index


def brute_force(ids: np.ndarray, vecs: np.ndarray, k: int) -> dict[int, tuple[list[int], np.ndarray]]:
    """The exact answer, the slow way: every similarity, the image itself left out."""
    sims = vecs @ vecs.T
    out = {}
    for r, i in enumerate(ids):
        order = [c for c in np.argsort(-sims[r], kind="stable") if c != r][:k]
        out[int(i)] = ([int(ids[c]) for c in order], sims[r, order])
    return out


def assert_exact(table: np.ndarray, ids: np.ndarray, vecs: np.ndarray, k: int = K) -> None:
    truth = brute_force(ids, vecs, k)
    assert sorted(table["id"].tolist()) == table["id"].tolist() == sorted(int(i) for i in ids)
    for image_id, (want_ids, want_sims) in truth.items():
        got_ids, got_sims = lookup(table, image_id)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
        # Ties may come in either order; away from ties the ids must agree.
        distinct = np.concatenate([[True], np.abs(np.diff(want_sims)) > 1e-5]) & np.concatenate(
            [np.abs(np.diff(want_sims)) > 1e-5, [True]]
        )
        assert np.array_equal(np.asarray(got_ids)[distinct], np.asarray(want_ids)[distinct]), image_id


def test_full_table_is_the_exact_top_k_without_the_image_itself() -> None:
    vecs = clustered(300)
    ids = np.arange(1000, 1300, dtype=np.int64)[::-1].copy()  # out of order on purpose
    table, stats = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)
    assert stats.full and stats.searched == 300
    assert_exact(table, ids, vecs)


def test_identical_vectors_are_each_others_neighbours_not_themselves() -> None:
    vecs = clustered(50)
    vecs[10] = vecs[20] = vecs[30]  # byte-identical files share a vector
    ids = np.arange(1, 51, dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)
    for me, others in ((11, {21, 31}), (21, {11, 31}), (31, {11, 21})):
        nbr, sim = lookup(table, me)
        assert me not in nbr.tolist()
        assert set(nbr[:2].tolist()) == others
        assert sim[0] == pytest.approx(1.0, abs=1e-5)


def test_fewer_images_than_k_lists_every_other_image() -> None:
    vecs = clustered(5)
    ids = np.array([3, 9, 4, 7, 1], dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)
    for i in ids:
        nbr, _ = lookup(table, int(i))
        assert sorted(nbr.tolist()) == sorted(int(j) for j in ids if j != i)
    assert (table["nbr"][:, 4:] == -1).all()
    assert lookup(table, 2) is None


def test_incremental_update_matches_a_full_recompute() -> None:
    rng = np.random.default_rng(1)
    vecs = clustered(1000, seed=1)
    ids = np.arange(1, 1001, dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)

    # Remove 10, change 5 in place (same id, new vector), add 12 with new ids.
    removed = rng.choice(ids, 10, replace=False)
    keep = ~np.isin(ids, removed)
    ids2, vecs2 = ids[keep], vecs[keep].copy()
    changed = rng.choice(len(ids2), 5, replace=False)
    vecs2[changed] = clustered(5, seed=2)
    ids2 = np.concatenate([ids2, np.arange(2000, 2012)])
    vecs2 = np.concatenate([vecs2, clustered(12, seed=3)])

    table2, stats = update_neighbours(ids2, vecs2, flat(ids2, vecs2), table, k=K)
    assert not stats.full
    # The added and changed rows, plus the rows that listed a removed or changed vector.
    assert 17 <= stats.searched < 0.25 * len(ids2)
    assert stats.merged == len(ids2) - stats.searched
    assert_exact(table2, ids2, vecs2)


def test_a_large_change_recomputes_everything() -> None:
    vecs = clustered(200)
    ids = np.arange(1, 201, dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)
    vecs2 = clustered(200, seed=5)  # a new model: every vector differs
    table2, stats = update_neighbours(ids, vecs2, flat(ids, vecs2), table, k=K)
    assert stats.full
    assert_exact(table2, ids, vecs2)


def test_a_table_of_another_k_is_not_reused() -> None:
    vecs = clustered(100)
    ids = np.arange(1, 101, dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=4)
    table2, stats = update_neighbours(ids, vecs, flat(ids, vecs), table, k=K)
    assert stats.full
    assert_exact(table2, ids, vecs)


def test_rows_from_an_approximate_index_are_what_it_answers() -> None:
    vecs = clustered(2000, dim=32)
    ids = np.arange(1, 2001, dtype=np.int64)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(32, 8, faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vecs, ids)
    faiss.downcast_index(hnsw.index).hnsw.efSearch = 16
    table, _ = update_neighbours(ids, vecs, hnsw, None, k=K)
    sims, found = hnsw.search(vecs[:50], K + 1)
    for r in range(50):
        want = [int(i) for i in found[r] if i >= 0 and i != ids[r]][:K]
        assert lookup(table, int(ids[r]))[0].tolist() == want


def test_fingerprints_tell_exactly_which_vectors_changed() -> None:
    vecs = clustered(100)
    fp = fingerprints(vecs)
    assert len(set(fp.tolist())) == 100
    nudged = vecs.copy()
    nudged[7, 3] = np.nextafter(nudged[7, 3], np.float32(2))  # one bit of one float
    fp2 = fingerprints(nudged)
    assert np.flatnonzero(fp != fp2).tolist() == [7]
    assert np.array_equal(fingerprints(vecs[::-1].copy()), fp[::-1])  # per row, not per position


def test_write_read_round_trip_and_bad_files(tmp_path: Path) -> None:
    vecs = clustered(60)
    ids = np.arange(1, 61, dtype=np.int64)
    table, _ = update_neighbours(ids, vecs, flat(ids, vecs), None, k=K)
    path = tmp_path / NEIGHBOURS
    write_neighbours(table, path)
    back = read_neighbours(path, K)
    assert isinstance(back, np.memmap) or isinstance(back.base, np.memmap)
    assert back.dtype == table_dtype(K) and np.array_equal(back, table)
    assert [p.name for p in tmp_path.iterdir()] == [NEIGHBOURS]  # no temporary file left behind

    assert read_neighbours(path, K + 1) is None  # a table of another k
    assert read_neighbours(tmp_path / "missing.npy") is None
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    assert read_neighbours(tmp_path / "junk.npy") is None
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert read_neighbours(tmp_path / "objects.npy") is None  # never unpickled
    np.save(tmp_path / "plain.npy", np.zeros((3, 3)))
    assert read_neighbours(tmp_path / "plain.npy") is None


def test_publish_keeps_the_table_current(tmp_path: Path) -> None:
    vecs = clustered(120)
    store = VectorStore(vecs.shape[1])
    store.add(np.arange(1, 121), vecs)
    m1 = publish(tmp_path, store, plan_index(len(store), store.dim), "model-a", None, neighbours_k=K)
    assert m1.neighbours_k == K and "computed" in m1.neighbours
    assert_exact(read_neighbours(tmp_path / NEIGHBOURS, K), np.arange(1, 121), vecs)

    store.remove([5, 6])
    store.add(np.array([200]), clustered(1, seed=9))
    m2 = publish(tmp_path, store, plan_index(len(store), store.dim), "model-a", m1, neighbours_k=K)
    assert "updated" in m2.neighbours
    ids, now = store.all_vectors()
    assert_exact(read_neighbours(tmp_path / NEIGHBOURS, K), ids, now)

    m3 = publish(tmp_path, store, plan_index(len(store), store.dim), "model-a", m2, neighbours_k=0)
    assert m3.neighbours_k == 0 and not (tmp_path / NEIGHBOURS).exists()
