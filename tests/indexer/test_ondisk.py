"""The on-disk search index (indexer/ondisk.py): IVF-PQ whose lists live in a memory-mapped file,
candidates re-ranked with the exact vectors. Small sizes with a forced low threshold."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from synthetic_index import add_rows, new_index_dir

from indexer import Catalog, Manifest, VectorStore, ondisk, plan_index, vectors
from indexer.layout import NEIGHBOURS, SEARCH
from indexer.publish import publish
from search.engine import Engine

DIM = 64
N = 20_000


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """Unit vectors in clusters of uneven spread (neighbours that are near, not a uniform sphere);
    the same clusters whatever the seed, which draws the points."""
    shape = np.random.default_rng(1234)
    centres = shape.standard_normal((300, dim)).astype(np.float32)
    spread = shape.uniform(0.3, 1.0, 300).astype(np.float32)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, 300, n)
    x = centres[which] + spread[which, None] * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-disk index (and no neighbour table) from 10k vectors instead of millions (HNSW from 5k)."""
    monkeypatch.setattr(vectors, "FLAT_MAX", 5_000)
    monkeypatch.setattr(ondisk, "ONDISK_ABOVE", 10_000)
    monkeypatch.setattr(ondisk, "NEIGHBOURS_MAX", 10_000)


def make_index(root: Path, n: int) -> tuple[Path, VectorStore, str]:
    """An index directory with a model, catalog rows for ids 1..n and a store of `n` vectors."""
    idx, mid = new_index_dir(root, DIM)
    add_rows(idx, mid, 1, n)
    store = VectorStore(DIM)
    store.add(np.arange(1, n + 1, dtype=np.int64), clustered(n))
    return idx, store, mid


def publish_auto(idx: Path, store: VectorStore, mid: str, previous: Manifest | None) -> Manifest:
    cat = Catalog.for_directory(idx)
    try:
        return publish(idx, store, plan_index(len(store), store.dim), mid, previous, catalog=cat)
    finally:
        cat.close()


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) for f, e in zip(found, exact, strict=True)])) / exact.shape[1]


def quantiser(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return faiss.rev_swig_ptr(faiss.downcast_index(ivf.quantizer).get_xb(), ivf.nlist * index.d).copy()


def test_auto_plan_chooses_the_disk_index_above_the_threshold(low_threshold: None) -> None:
    assert plan_index(9_999, DIM).index_type == "hnsw"
    plan = plan_index(N, DIM)
    assert plan.index_type == ondisk.ONDISK
    assert plan.params["m"] * 4 == DIM and plan.params["nlist"] ** 2 <= 2 * N
    assert plan_index(N, DIM, ondisk.ONDISK).index_type == ondisk.ONDISK  # --index-type ivfpq-disk
    assert plan_index(500, DIM, ondisk.ONDISK).index_type == "flat"  # too few to train


def test_recall_after_rerank_against_exact_search(tmp_path: Path, low_threshold: None) -> None:
    idx, store, mid = make_index(tmp_path, N)
    m = publish_auto(idx, store, mid, None)
    assert m.index_type == ondisk.ONDISK and m.params["recall_at_10"] >= 0.95
    index = ondisk.read(m.files(idx) / SEARCH, m.params)
    assert ondisk.is_on_disk(index) and index.ntotal == N
    # Fresh queries near the data (not stored vectors): the re-ranked top 10 against the exact one.
    q = clustered(300, seed=7)
    _, exact = store.index.search(q, 10)
    sims, found = ondisk.search(index, q, 10, store.get, m.params["rerank"])
    assert recall_at_10(found, exact) >= 0.95
    # Re-ranked similarities are the exact inner products, best first.
    assert np.allclose(sims[:, 0], np.einsum("qd,qd->q", q, store.get(found[:, 0])), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    # Above the size the neighbour table is published empty: by-id queries search.
    assert np.load(m.files(idx) / NEIGHBOURS).shape == (0,)


def test_adding_a_chunk_keeps_the_quantiser_and_finds_the_new_vectors(tmp_path: Path, low_threshold: None) -> None:
    idx, store, mid = make_index(tmp_path, N)
    first = publish_auto(idx, store, mid, None)
    before = quantiser(ondisk.read(first.files(idx) / SEARCH))
    new_ids = np.arange(N + 1, N + 2_001, dtype=np.int64)
    new = clustered(2_000, seed=3)
    store.add(new_ids, new)
    add_rows(idx, mid, N + 1, N + 2_000)
    changed = clustered(1, seed=11)
    store.replace(np.array([5]), changed)  # an image whose file changed: same id, new vector
    store.remove(np.array([6]))
    second = publish_auto(idx, store, mid, first)
    index = ondisk.read(second.files(idx) / SEARCH, second.params)
    assert np.array_equal(quantiser(index), before), "the quantiser was retrained"
    assert second.params["trained_on"] == N and "2,000 added, 1 changed, 1 removed" in second.reason
    assert index.ntotal == N + 2_000 - 1
    _, found = ondisk.search(index, np.concatenate([new[:50], changed]), 1, store.get, second.params["rerank"])
    assert found[:, 0].tolist() == [*new_ids[:50].tolist(), 5]
    everything = np.concatenate(
        [
            faiss.rev_swig_ptr(index.invlists.get_ids(i), index.invlists.list_size(i))
            for i in range(index.nlist)
            if index.invlists.list_size(i)
        ]
    )
    assert sorted(everything.tolist()) == sorted(store.ids().tolist()), "each stored id indexed once, no other"
    # The first generation's files were not touched by the update (its readers keep their answers).
    assert ondisk.read(first.files(idx) / SEARCH).ntotal == N


def test_retrains_once_the_collection_has_grown_past_the_factor(tmp_path: Path, low_threshold: None) -> None:
    idx, store, mid = make_index(tmp_path, 2_000)
    first = publish(idx, store, plan_index(2_000, DIM, ondisk.ONDISK), mid, None)
    assert first.params["trained_on"] == 2_000
    more = int(2_000 * ondisk.RETRAIN_GROWTH) + 1
    store.add(np.arange(2_001, 2_001 + more, dtype=np.int64), clustered(more, seed=4))
    second = publish(idx, store, plan_index(len(store), DIM, ondisk.ONDISK), mid, first)
    assert second.params["trained_on"] == len(store) and "trained on" in second.reason


def test_a_server_answers_from_the_disk_index_after_the_directory_moves(tmp_path: Path, low_threshold: None) -> None:
    idx, store, mid = make_index(tmp_path / "a", N)
    publish_auto(idx, store, mid, None)
    moved = tmp_path / "b" / "moved-index"
    moved.parent.mkdir()
    shutil.move(idx, moved)  # the .ivfdata's recorded path is now wrong: it must be found beside the index
    for path in (moved / "generations").rglob("*"):
        if path.is_file():
            path.chmod(0o444)  # read-only, as several server processes share it
    eng = Engine(moved, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        assert snap.manifest.index_type == ondisk.ONDISK and ondisk.is_on_disk(snap.search)
        # Memory-mapped: the generation's data file is a mapping of this process, not a copy in its heap.
        data = os.fspath((moved / snap.manifest.directory / ondisk.SEARCH_DATA).resolve())
        assert data in Path("/proc/self/maps").read_text()
        q = clustered(50, seed=9)
        _, exact = store.index.search(q, 10)
        found = [[h.id for h in eng.search_vector(v[None], k=10)] for v in q]
        assert recall_at_10(np.array(found), exact) >= 0.95
        assert eng.precomputed(17, k=5) is None  # no table at this size: by-id queries search
        hits = eng.search_id(17, k=5)
        assert len(hits) == 5 and 17 not in [h.id for h in hits]
        assert hits[0].path.startswith("img_") and eng.stats()["index_type"] == ondisk.ONDISK
    finally:
        eng.close()
