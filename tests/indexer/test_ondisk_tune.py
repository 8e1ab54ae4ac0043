"""The on-disk index's search effort, nprobe and re-rank depth tuned together (indexer/ondisk_tune.py),
and madvise(MADV_RANDOM) on the segments a server re-ranks from. Real index files, real segments."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from synthetic_index import add_rows

from indexer import Manifest, ondisk, ondisk_tune, plan_index
from indexer.exact import SegmentVectors
from indexer.layout import SEARCH, SEGMENTS
from indexer.publish import publish
from indexer.rowio import PREFETCH_ROWS
from indexer.segments import SegmentStore
from indexer.vectors import NPROBE_LADDER, RECALL_TARGET, IndexPlan
from search.engine import Engine

from .test_exact import add, new_index

DIM = 64
N = 20_000
#: 8-byte codes (8 dimensions a sub-quantiser). At 64 dims the default 16-byte codes order these
#: 20k vectors well enough for 80 candidates; 8 bytes on 20 clusters of 1,000 isotropic points
#: are what 60-byte codes were on 10M autoencoder-like vectors: the true top 10 is not among the
#: best 80 PQ scores however many lists are probed.
COARSE_M = 8


def dense(n: int, seed: int) -> np.ndarray:
    """20 clusters of isotropic points (neighbours barely nearer than the rest of the cluster)."""
    shape = np.random.default_rng(99)
    centres = shape.standard_normal(DIM).astype(np.float32) * 3 + shape.standard_normal((20, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> tuple[faiss.Index, np.ndarray]:
    """An on-disk index of N dense vectors with coarse codes, and the vectors (id i is row i - 1)."""
    x = dense(N, 0)
    ids = np.arange(1, N + 1, dtype=np.int64)
    params = {**ondisk.ondisk_params(N, DIM), "m": COARSE_M}
    sample = ondisk.training_sample(ondisk.chunked(ids, x), N, params["nlist"])
    index, _ = ondisk.build(ondisk.train(sample, params), ondisk.chunked(ids, x), tmp_path_factory.mktemp("coarse"))
    return index, x


def by_id_queries(x: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Stored vectors as by-id queries: (their ids, the vectors, each one's exact top 10 without itself)."""
    rows = np.random.default_rng(seed).choice(len(x), count, replace=False)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    _, exact = flat.search(x[rows], 11)
    truth = [set((r[r != row][:10] + 1).tolist()) for r, row in zip(exact, rows, strict=True)]
    return rows + 1, x[rows], truth


def recall(found: np.ndarray, qids: np.ndarray, truth: list[set[int]]) -> float:
    """Recall@10 of by-id answers (k + 1 searched, the query's own id left out)."""
    hits = [len(t & set(row[row != qi][:10].tolist())) for t, row, qi in zip(truth, found, qids, strict=True)]
    return float(np.mean(hits)) / 10


def test_the_pair_ladder_reaches_a_recall_nprobe_alone_cannot(coarse: tuple[faiss.Index, np.ndarray]) -> None:
    index, x = coarse
    qids, q, truth = by_id_queries(x, 200, seed=5)

    def get(ids: np.ndarray) -> np.ndarray:
        return x[ids - 1]

    # nprobe alone, at the old fixed depth (80 candidates): every list probed is not enough.
    alone = ondisk_tune.tune(
        index, q, truth, get, 10, target=RECALL_TARGET, nprobe_ladder=NPROBE_LADDER, rerank_ladder=(8,), exclude=qids
    )
    assert max(m[2] for m in alone.measured) < 0.92
    assert {m[0] for m in alone.measured} >= {1, 2, 4, 8}, "it walked the lists"
    faiss.extract_index_ivf(index).nprobe = index.nlist  # every list probed: still capped by the candidates
    assert recall(ondisk.search(index, q, 11, get, ondisk.RERANK)[1], qids, truth) < 0.92
    tuned = ondisk_tune.tune(index, q, truth, get, 10, target=RECALL_TARGET, nprobe_ladder=NPROBE_LADDER, exclude=qids)
    assert tuned.recall >= RECALL_TARGET and tuned.rerank > ondisk.RERANK
    assert faiss.extract_index_ivf(index).nprobe == tuned.nprobe
    # What was measured is what ondisk.search answers at that pair, and it holds on other queries.
    qids2, q2, truth2 = by_id_queries(x, 200, seed=6)
    faiss.extract_index_ivf(index).nprobe = tuned.nprobe
    assert recall(ondisk.search(index, q2, 11, get, tuned.rerank)[1], qids2, truth2) >= RECALL_TARGET - 0.02
    # The cheapest pair is kept: no measured pair that reached the target costs less.
    cheaper = [
        m
        for m in tuned.measured
        if m[2] >= RECALL_TARGET
        and ondisk_tune.cost(m[0], m[1], 11, N, index.nlist)
        < ondisk_tune.cost(tuned.nprobe, tuned.rerank, 11, N, index.nlist)
    ]
    assert not cheaper


def test_the_tuned_depth_round_trips_through_the_manifest_and_the_engine_uses_it(tmp_path: Path) -> None:
    idx, store, mid = new_index(tmp_path, 1)
    store.add(np.arange(1, N + 1, dtype=np.int64), dense(N, 0))  # id 1 replaced: every vector dense
    add_rows(idx, mid, 2, N, seq=2)
    store.save(seq=2)
    plan = plan_index(len(store), DIM, ondisk.ONDISK)
    plan = IndexPlan(plan.index_type, {**plan.params, "m": COARSE_M}, plan.reason)
    m = publish(idx, store, plan, mid, None, neighbours_k=0)
    assert not store.index_built, "the publish built an in-memory flat copy of the store"
    assert m.params["rerank"] > ondisk.RERANK and m.params["recall_at_10"] >= RECALL_TARGET
    assert f"rerank {m.params['rerank']}" in m.reason
    # On disk: the manifest a server reads holds it.
    assert Manifest.read(idx).params["rerank"] == m.params["rerank"]
    assert json.loads((idx / "manifest.json").read_text())["params"]["rerank"] == m.params["rerank"]

    q = dense(60, seed=8)
    index = ondisk.read(m.files(idx) / SEARCH, m.params)
    _, tuned = ondisk.search(index, q, 10, store.get, m.params["rerank"])
    _, shallow = ondisk.search(index, q, 10, store.get, ondisk.RERANK)
    assert (tuned != shallow).any(), "the depths answer differently here"
    eng = Engine(idx, device="cpu", reload_check_s=3600)
    try:
        served = np.array([[h.id for h in eng.search_vector(v[None], k=10)] for v in q])
    finally:
        eng.close()
    assert np.array_equal(served, tuned), "the engine re-ranks the tuned number of candidates"


def test_madvise_random_changes_no_answer(tmp_path: Path) -> None:
    idx, store, mid = new_index(tmp_path, 3_000)
    add(idx, store, mid, 3_001, 4_000, seq=2)  # two segments
    directory = idx / SEGMENTS
    plain = _Unadvised(SegmentStore.open(directory, DIM, writable=False))
    advised = SegmentVectors(SegmentStore.open(directory, DIM, writable=False))  # as a server opens them
    assert advised.store.advise_random() == len(advised.store.segments) == 2
    # The kernel took the advice: the segment files' mappings carry VmFlags "rr" (random read).
    flags = mapping_flags(directory.resolve(), ".vectors.npy")
    assert any("rr" in f for f in flags) and not all("rr" in f for f in flags), "the plain store's are not advised"
    ids = np.random.default_rng(1).permutation(plain.ids())[:500]
    ids = np.r_[ids, 1, 3_000, 3_001, 4_000]  # the first and last rows of each file (their pages' edges)
    assert len(ids) <= PREFETCH_ROWS  # an advised store's get prefetches these rows' pages first
    assert np.array_equal(plain.get(ids), advised.get(ids))
    q = plain.get(ids[:20]) + 0.01
    for a, b in zip(plain.search_among(q, 10, ids[::2]), advised.search_among(q, 10, ids[::2]), strict=True):
        assert np.array_equal(a, b)


def mapping_flags(directory: Path, suffix: str) -> list[list[str]]:
    """VmFlags of this process's mappings of files in `directory` ending with `suffix` (/proc/self/smaps)."""
    flags, inside = [], False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and not line.startswith("VmFlags"):  # a mapping's first line
            inside = line.endswith(suffix) and str(directory) in line
        elif inside and line.startswith("VmFlags:"):
            flags.append(head[1:])
    return flags


class _Unadvised(SegmentVectors):
    """SegmentVectors without its constructor's madvise (the reader before this change)."""

    def __init__(self, store: SegmentStore) -> None:
        self.store, self.dim = store, int(store.dim)


def test_sq8_codes_are_asked_for_by_index_type() -> None:
    from indexer.vectors import INDEX_TYPES, ONDISK_SQ8

    assert ONDISK_SQ8 in INDEX_TYPES
    plan = plan_index(50_000, DIM, ONDISK_SQ8)
    assert plan.index_type == ondisk.ONDISK and plan.params["codes"] == "sq8" and "scalar" in plan.reason
    assert plan_index(50_000, DIM, ondisk.ONDISK).params["codes"] == "pq"
    assert plan_index(500, DIM, ONDISK_SQ8).index_type == "flat"  # too few to train: flat, as for PQ


def test_sq8_codes_publish_update_and_answer(tmp_path: Path) -> None:
    idx, store, mid = new_index(tmp_path, 1)
    store.add(np.arange(1, N + 1, dtype=np.int64), dense(N, 0))
    add_rows(idx, mid, 2, N, seq=2)
    store.save(seq=2)
    plan = plan_index(len(store), DIM, ondisk.ONDISK)
    plan = IndexPlan(plan.index_type, {**plan.params, "codes": "sq8"}, plan.reason)
    first = publish(idx, store, plan, mid, None, neighbours_k=0)
    index = ondisk.read(first.files(idx) / SEARCH, first.params)
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFScalarQuantizer) and ondisk.is_on_disk(index)
    assert first.params["codes"] == "sq8" and first.params["recall_at_10"] >= RECALL_TARGET
    # 1 byte a dimension: the same dense vectors need no deeper re-rank than the default.
    assert first.params["rerank"] == ondisk.RERANK
    # An update keeps the codes and the quantiser (no retraining), and finds what was added.
    add(idx, store, mid, N + 1, N + 500, seq=3)
    second = publish(idx, store, plan, mid, first, neighbours_k=0)
    assert second.params["codes"] == "sq8" and "updated" in second.reason
    index = ondisk.read(second.files(idx) / SEARCH, second.params)
    new = store.get(np.arange(N + 1, N + 51))
    assert ondisk.search(index, new, 1, store.get, second.params["rerank"])[1][:, 0].tolist() == list(
        range(N + 1, N + 51)
    )
    # Codes other than the published ones: a new index, trained again.
    pq = IndexPlan(plan.index_type, {**plan.params, "codes": "pq"}, plan.reason)
    third = publish(idx, store, pq, mid, second, neighbours_k=0)
    assert third.params["codes"] == "pq" and "trained on" in third.reason


def test_the_writers_exact_ground_truth_needs_no_flat_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ground truth an on-disk index is tuned against, scanned from the segments block by block,
    is the flat index's answer, and scanning builds no in-memory flat copy of every vector (9.6 GB at
    10M)."""
    import indexer.vectors as iv

    idx, store, mid = new_index(tmp_path, 1)
    store.add(np.arange(1, N + 1, dtype=np.int64), dense(N, 0))
    add_rows(idx, mid, 2, N, seq=2)
    store.save(seq=2)
    q = dense(50, seed=3)
    monkeypatch.setattr(iv, "SCORE_ROWS", 4_096)  # 5 blocks over the 20k vectors
    blockwise = iv.exact_top(store, q, 11)
    assert not store.index_built
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    flat.add_with_ids(store.get(store.ids()), store.ids())
    assert np.array_equal(blockwise, flat.search(q, 11)[1])
    assert (iv.exact_top(store, q[:2], N + 5)[:, N:] == -1).all()  # fewer stored than asked: padded
    # (that a publish builds no flat copy is asserted where one is made: the tuned-depth test above)
