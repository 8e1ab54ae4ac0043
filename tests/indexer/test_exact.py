"""A generation's exact vectors (indexer/exact.py): read from its segments when its search index is
not flat, so a publish writes no flat copy of them; the same answers as the flat store.

Real files throughout: segment stores on disk, real publishes, an Engine opening them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from synthetic_index import add_rows, new_index_dir

from indexer import Catalog, Manifest, VectorStore, exact, ondisk, plan_index
from indexer.exact import FlatVectors, SegmentVectors
from indexer.layout import GENERATIONS, SEARCH, SEGMENTS, STORE
from indexer.publish import publish
from indexer.segments import SegmentStore
from search.engine import Engine

DIM = 64


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors in 50 clusters (neighbours that are near, as images' are)."""
    centres = np.random.default_rng(99).standard_normal((50, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def twin_stores(directory: Path) -> tuple[SegmentStore, VectorStore]:
    """The same content in a segment store (three segments, a replacement and removals among them,
    ids with gaps) and in the flat FAISS store."""
    seg, flat = SegmentStore.open(directory, DIM), VectorStore(DIM)
    for seq, (first, n) in enumerate(((1, 2_000), (5_001, 1_500), (9_001, 700)), 1):
        ids = np.arange(first, first + 2 * n, 2, dtype=np.int64)  # every other id: gaps
        v = unit(n, seq)
        seg.add(ids, v)
        flat.add(ids, v)
        seg.save(seq=seq)
    replaced, removed = np.array([3, 5_003]), np.array([7, 9_001])
    v = unit(2, 9)
    seg.replace(replaced, v)
    flat.replace(replaced, v)
    seg.remove(removed)
    flat.remove(removed)
    seg.save(seq=4)
    return seg, flat


def test_segment_and_flat_vectors_answer_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, store = twin_stores(tmp_path / SEGMENTS)
    seg = SegmentVectors(SegmentStore.open(tmp_path / SEGMENTS, 0, writable=False))
    flat = FlatVectors(store.index)
    assert len(seg) == len(flat) == 4_200 - 2 and seg.dim == flat.dim == DIM
    assert np.array_equal(seg.ids(), flat.ids()) and np.all(np.diff(seg.ids()) > 0)
    some = np.random.default_rng(0).choice(seg.ids(), 500, replace=False)
    assert np.array_equal(seg.get(some), flat.get(some))
    assert np.array_equal(seg.all_vectors()[1], flat.all_vectors()[1])
    for vectors in (seg, flat):
        with pytest.raises(KeyError):
            vectors.get([1, 7])  # removed
        assert vectors.contains(np.array([1, 2, 7, 9_003])).tolist() == [True, False, False, True]
    # Filtered top-k: what FAISS's IDSelector search answers, in a few blocks of rows.
    monkeypatch.setattr(exact, "SCORE_ROWS", 300)
    q = unit(5, 42)
    allowed = np.concatenate([np.arange(1, 4_000), [123_456]])  # odd ids stored, even ones and one far id not
    for k in (1, 10, 60):
        s_seg, i_seg = seg.search_among(q, k, allowed)
        s_flat, i_flat = flat.search_among(q, k, allowed)
        assert np.array_equal(i_seg, i_flat), k
        np.testing.assert_allclose(s_seg, s_flat, atol=1e-5)
        assert np.isin(i_seg, allowed).all()
    # Fewer allowed than k: padded as FAISS pads.
    s_seg, i_seg = seg.search_among(q[:1], 5, np.array([1, 3, 2]))
    s_flat, i_flat = flat.search_among(q[:1], 5, np.array([1, 3, 2]))
    assert i_seg.tolist() == i_flat.tolist() and sorted(i_seg[0, :2].tolist()) == [1, 3]
    assert i_seg[0, 2:].tolist() == [-1, -1, -1] and np.isneginf(s_seg[0, 2:]).all()


def test_flat_vectors_read_the_newest_of_an_id_stored_twice() -> None:
    """A store from before segments may hold an id twice (migrate.migrate_store keeps the newest):
    FAISS's reconstruct answers the newest, and so must the flat reader."""
    store = VectorStore(DIM)
    store.add(np.array([4, 5]), unit(2, 1))
    newer = unit(1, 2)
    store.add(np.array([4]), newer)
    flat = FlatVectors(store.index)
    assert flat.ids().tolist() == [4, 5]
    assert np.array_equal(flat.get([4]), newer) and np.array_equal(flat.get([4])[0], store.index.reconstruct(4))


# ---------------------------------------------------------------- published indexes


def new_index(root: Path, n: int) -> tuple[Path, SegmentStore, str]:
    """An index directory with a model, catalog rows for ids 1..n and a saved segment store of `n`."""
    idx, mid = new_index_dir(root, DIM)
    store = SegmentStore.open(idx / SEGMENTS, DIM)
    add(idx, store, mid, 1, n)
    return idx, store, mid


def add(idx: Path, store: SegmentStore, mid: str, first: int, last: int, seq: int = 1) -> None:
    """Catalog rows and vectors for ids first..last, then a checkpoint."""
    add_rows(idx, mid, first, last, seq)
    store.add(np.arange(first, last + 1, dtype=np.int64), unit(last - first + 1, first))
    store.save(seq=seq)


def publish_as(idx: Path, store, mid: str, previous: Manifest | None, kind: str) -> Manifest:
    cat = Catalog.for_directory(idx)
    try:
        plan = plan_index(len(store), store.dim, kind)
        return publish(idx, store, plan, mid, previous, catalog=cat, neighbours_k=0)
    finally:
        cat.close()


def with_prefix(ids: np.ndarray, prefix: str) -> np.ndarray:
    """The ids whose catalog path (see :func:`add`) starts with `prefix`."""
    return np.array([i for i in ids.tolist() if f"img_{i:07d}.jpg".startswith(prefix)], dtype=np.int64)


def inodes(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (inode, size) of every file under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


def test_a_non_flat_publish_writes_only_the_new_vectors(tmp_path: Path) -> None:
    """Adding 1,000 vectors to an index of 20,000 writes ~1,000 vectors' bytes of exact vectors (the
    new segment), not the 20,000 of a flat file; the search index is the only file sized by N."""
    n, added = 20_000, 1_000
    idx, store, mid = new_index(tmp_path, n)
    first = publish_as(idx, store, mid, None, "ivf")
    gen1 = first.files(idx)
    assert first.search_file == SEARCH and not (gen1 / STORE).exists() and not (idx / STORE).exists()
    before = {ino for ino, _ in inodes(idx).values()}
    add(idx, store, mid, n + 1, n + added, seq=2)
    second = publish_as(idx, store, mid, first, "ivf")
    gen2 = second.files(idx)
    assert not (gen2 / STORE).exists() and not (idx / STORE).exists()
    new = {name: size for name, (ino, size) in inodes(gen2).items() if ino not in before}
    exact_bytes = sum(size for name, size in new.items() if name.startswith(f"{SEGMENTS}/") or name == STORE)
    one_vector = 4 * DIM
    assert added * one_vector < exact_bytes < added * one_vector + 32_768, new  # the segment and its headers
    assert exact_bytes < n * one_vector / 10
    assert set(new) - {f"{SEGMENTS}/{name}" for name in os.listdir(gen2 / SEGMENTS)} <= {
        SEARCH,  # an IVF index holds its vectors: rebuilt from the store (below DELTA_ABOVE: no delta)
        "search.ids.npy",  # its (id, fingerprint) table, 16 bytes a vector: what a delta is measured against
        "hit_rows.bin",
        "manifest.json",
    }, new
    # A server reads the new generation's vectors from its segments.
    eng = Engine(idx, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        assert isinstance(snap.vectors, SegmentVectors) and len(snap.vectors) == n + added
        assert np.array_equal(eng.vector(n + 5), store.get([n + 5]))
        hits = eng.search_id(n + 5, k=5)
        assert len(hits) == 5 and n + 5 not in [h.id for h in hits]
    finally:
        eng.close()


def test_a_type_change_drops_the_flat_file_and_old_generations_keep_theirs(tmp_path: Path) -> None:
    idx, store, mid = new_index(tmp_path, 3_000)
    flat = publish_as(idx, store, mid, None, "flat")
    assert (idx / STORE).exists() and (flat.files(idx) / STORE).samefile(idx / STORE)
    eng = Engine(idx, device="cpu", reload_check_s=0)
    try:
        assert isinstance(eng.snapshot().vectors, FlatVectors)
        hnsw = publish_as(idx, store, mid, flat, "hnsw")
        assert not (idx / STORE).exists() and not (hnsw.files(idx) / STORE).exists()
        assert (flat.files(idx) / STORE).exists()  # the previous generation is whole: its readers go on
        snap = eng.snapshot()
        assert snap.manifest.generation == hnsw.generation and isinstance(snap.vectors, SegmentVectors)
        assert np.array_equal(eng.vector(17), store.get([17]))
        back = publish_as(idx, store, mid, hnsw, "flat")
        assert (back.files(idx) / STORE).samefile(idx / STORE)
        assert isinstance(eng.snapshot().vectors, FlatVectors) and np.array_equal(eng.vector(17), store.get([17]))
    finally:
        eng.close()


def test_the_disk_index_reranks_and_filters_from_segments_as_from_the_flat_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 12_000
    idx, store, mid = new_index(tmp_path, n)
    m = publish_as(idx, store, mid, None, ondisk.ONDISK)
    assert m.index_type == ondisk.ONDISK and not (m.files(idx) / STORE).exists()
    flat = FlatVectors(store.index)  # the same vectors as the flat store a server used to open
    monkeypatch.setattr(exact, "SCORE_ROWS", 1_000)  # a filter's rows in several blocks
    eng = Engine(idx, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        assert isinstance(snap.vectors, SegmentVectors)
        q = unit(40, 7)
        rerank = int(m.params["rerank"])
        want_s, want_i = ondisk.search(snap.search, q, 10, flat.get, rerank)
        for row, v in enumerate(q):
            hits = eng.search_vector(v[None], k=10)
            assert [h.id for h in hits] == want_i[row].tolist()
            np.testing.assert_allclose([h.similarity for h in hits], want_s[row], atol=1e-6)
            # Filtered (ids 1,000-1,999): exact, as the flat store's IDSelector search answers.
            hits = eng.search_vector(v[None], k=10, path_prefix="img_0001")
            s, i = flat.search_among(v[None], 10, with_prefix(flat.ids(), "img_0001"))
            assert [h.id for h in hits] == i[0].tolist()
            np.testing.assert_allclose([h.similarity for h in hits], s[0], atol=1e-5)
    finally:
        eng.close()


@pytest.mark.parametrize("generations", [True, False])
def test_an_index_with_only_vectors_faiss_still_serves(tmp_path: Path, generations: bool) -> None:
    """An approximate index published before segments: ``vectors.faiss`` beside ``search.faiss``, no
    ``segments/``; with `generations` False, from before generations too (its files at the top)."""
    n = 3_000
    idx, segments, mid = new_index(tmp_path, n)
    store = VectorStore(DIM)
    store.add(*segments.all_vectors())
    shutil.rmtree(idx / SEGMENTS)
    m = publish_as(idx, store, mid, None, "hnsw")  # a store not kept as segments: the flat file is its copy
    assert (m.files(idx) / STORE).exists() and not (m.files(idx) / SEGMENTS).exists()
    if not generations:
        m.directory = ""
        m.write(idx)
        shutil.rmtree(idx / GENERATIONS)
    eng = Engine(idx, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        assert isinstance(snap.vectors, FlatVectors) and len(snap.vectors) == n
        assert np.array_equal(eng.vector(42), store.get([42]))
        hits = eng.search_vector(store.get([42]), k=5, path_prefix="img_00001")  # ids 100-199
        allowed = with_prefix(store.ids(), "img_00001")
        assert len(allowed) == 100
        _, want = FlatVectors(store.index).search_among(store.get([42]), 5, allowed)
        assert [h.id for h in hits] == want[0].tolist()
    finally:
        eng.close()
