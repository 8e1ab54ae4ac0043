"""A publish that reuses the search index with a delta beside it (indexer/delta.py): what it
writes, what readers answer from it, and when it builds the index again instead."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import faiss
import numpy as np
import pytest
from synthetic_index import add_rows, new_index_dir

from indexer import Catalog, Manifest, build_index, delta, ondisk, plan_index, vectors
from indexer.delta import DELTA, HIT_ROWS_DELTA, Delta, DeltaIndex, base_table, diff
from indexer.layout import HIT_ROWS, NEIGHBOURS, SEARCH, SEGMENTS
from indexer.neighbours import fingerprints
from indexer.publish import publish
from indexer.segments import SegmentStore
from search.engine import Engine, NotFound
from search.reports import near_duplicates

DIM = 32
N = 3_000


def unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def small_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deltas over bases of the sizes a test can build."""
    monkeypatch.setattr(delta, "DELTA_ABOVE", 1_000)


# ---------------------------------------------------------------- the index a reader searches


@pytest.mark.parametrize("kind", ["flat-ip", "hnsw-ip", "ivf-l2"])
def test_delta_index_answers_as_an_exact_search_of_what_is_stored_now(kind: str) -> None:
    x, ids = unit(N, 0), np.arange(1, N + 1, dtype=np.int64)
    if kind == "flat-ip":
        base = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    elif kind == "hnsw-ip":
        inner = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efSearch = 512
        base = faiss.IndexIDMap2(inner)
    else:  # an L2 index over unit vectors, as the on-disk one is: distances, not similarities
        base = faiss.IndexIVFFlat(faiss.IndexFlatL2(DIM), DIM, 16)
        base.train(x)
        base.nprobe = 16
    base.add_with_ids(x, ids)
    now = x.copy()
    now[100:150] = unit(50, 1)  # changed
    added = unit(200, 2)
    now_ids = np.concatenate([ids[100:], np.arange(N + 1, N + 201)])  # 1..100 removed
    now = np.concatenate([now[100:], added])
    change = diff(base_table(ids, fingerprints(x)), now_ids, fingerprints(now))
    assert change.search.tolist() == list(range(101, 151)) + list(range(N + 1, N + 201))
    assert change.hide.tolist() == list(range(1, 151))
    index = DeltaIndex(base, change, now[np.searchsorted(now_ids, change.search)])
    assert index.ntotal == len(now_ids)
    queries = now[np.random.default_rng(3).choice(len(now), 100, replace=False)]
    _, found = index.search(queries, 10)
    truth = now_ids[np.argsort(-(queries @ now.T), axis=1)[:, :10]]
    assert not np.isin(found, np.arange(1, 101)).any()  # removed: never returned, and no gap left
    assert (found >= 0).all()
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.99
    # The changed vectors are found as they are now, not as the base holds them.
    _, top = index.search(now[np.searchsorted(now_ids, np.arange(101, 151))], 1)
    assert top[:, 0].tolist() == list(range(101, 151))


def test_a_delta_file_round_trips_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    change = Delta(np.array([3, 7, 9], np.int64), np.array([1, 7], np.int64))
    delta.write_delta(change, tmp_path / DELTA)
    back = delta.read_delta(tmp_path / DELTA)
    assert back.search.tolist() == [3, 7, 9] and back.hide.tolist() == [1, 7]
    np.save(tmp_path / "other.npy", np.arange(5))
    with pytest.raises(ValueError, match="not a delta"):
        delta.read_delta(tmp_path / "other.npy")


# ---------------------------------------------------------------- publishing one


def first_publish(root: Path, kind: str = "hnsw", n: int = N) -> tuple[Path, SegmentStore, str, Manifest]:
    idx, mid = new_index_dir(root, DIM)
    store = SegmentStore.open(idx / SEGMENTS, DIM)
    add_rows(idx, mid, 1, n)
    store.add(np.arange(1, n + 1, dtype=np.int64), unit(n, 0))
    store.save(seq=1)
    return idx, store, mid, publish_now(idx, store, mid, None, kind, seq=1)


def publish_now(idx: Path, store: SegmentStore, mid: str, previous: Manifest | None, kind: str, seq: int) -> Manifest:
    cat = Catalog.for_directory(idx)
    try:
        return publish(idx, store, plan_index(len(store), DIM, kind), mid, previous, catalog=cat, store_seq=seq)
    finally:
        cat.close()


def change_some(idx: Path, store: SegmentStore, mid: str, seq: int) -> dict[str, np.ndarray]:
    """Add 100 images (the first 10 near copies of images 1001..1010), give 20 new vectors,
    remove 20, rename one; then a checkpoint."""
    new = np.arange(N + 1, N + 101, dtype=np.int64)
    vecs = unit(100, seq)
    near = store.get(np.arange(1001, 1011)) + 0.01 * unit(10, 99)
    vecs[:10] = near / np.linalg.norm(near, axis=1, keepdims=True)
    add_rows(idx, mid, N + 1, N + 100, seq=seq)
    store.add(new, vecs)
    changed = np.arange(1, 21, dtype=np.int64)
    store.replace(changed, unit(20, 50 + seq))
    removed = np.arange(21, 41, dtype=np.int64)
    store.remove(removed)
    with sqlite3.connect(idx / "catalog.sqlite") as con:
        con.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in removed])
        con.execute("UPDATE images SET path = 'renamed/forty-one.jpg' WHERE id = 41")
    store.save(seq=seq)
    return {"new": new, "changed": changed, "removed": removed}


def new_inodes(idx: Path, old: Manifest, new: Manifest) -> dict[str, int]:
    """name -> size of the files of generation `new` that generation `old` does not share."""
    seen = {(p.stat().st_ino) for p in old.files(idx).rglob("*") if p.is_file()}
    out = {}
    for p in new.files(idx).rglob("*"):
        if p.is_file() and p.stat().st_ino not in seen:
            out[str(p.relative_to(new.files(idx)))] = p.stat().st_size
    return out


def test_a_small_change_reuses_the_index_and_writes_only_the_change(tmp_path: Path) -> None:
    idx, store, mid, first = first_publish(tmp_path)
    assert not first.delta and (first.files(idx) / delta.BASE_IDS).exists()
    change_some(idx, store, mid, seq=2)
    second = publish_now(idx, store, mid, first, "hnsw", seq=2)
    assert second.delta["search"] == 120 and second.delta["hide"] == 40 and second.delta["hit_rows"] == "layered"
    assert second.delta["base_generation"] == first.generation and second.count == N + 80
    for name in (SEARCH, delta.BASE_IDS, NEIGHBOURS, HIT_ROWS):  # the same files, linked
        assert os.path.samefile(first.files(idx) / name, second.files(idx) / name)
    written = new_inodes(idx, first, second)
    assert {n for n in written if not n.startswith(f"{SEGMENTS}/")} == {DELTA, HIT_ROWS_DELTA, "manifest.json"}
    # The delta's own bytes: its ids and 101 rows (added, renamed), against 3,000 x 32 x 4 for the vectors.
    assert written[DELTA] < 4_000 and written[HIT_ROWS_DELTA] < 6_000
    # A second change is measured against the base again, not chained on the delta.
    more = np.arange(N + 101, N + 111, dtype=np.int64)
    add_rows(idx, mid, N + 101, N + 110, seq=3)
    store.add(more, unit(10, 77))
    store.save(seq=3)
    third = publish_now(idx, store, mid, second, "hnsw", seq=3)
    assert third.delta["search"] == 130 and third.delta["base_generation"] == first.generation
    assert os.path.samefile(second.files(idx) / SEARCH, third.files(idx) / SEARCH)  # generation 1 is tidied away


def test_a_delta_generation_is_refused_by_a_reader_that_does_not_know_its_features(tmp_path: Path) -> None:
    """A delta generation says so in ``requires``; a reader meets a feature it does not know (as this
    version would meet a newer one's) with a clear refusal, from the engine and the indexer, instead
    of serving the base alone."""
    from indexer.manifest import READER_FEATURES, IndexFormatError

    idx, store, mid, first = first_publish(tmp_path)
    assert json.loads((idx / "manifest.json").read_text())["requires"] == []
    change_some(idx, store, mid, seq=2)
    second = publish_now(idx, store, mid, first, "hnsw", seq=2)
    assert second.delta and json.loads((idx / "manifest.json").read_text())["requires"] == ["delta"]
    assert "delta" in READER_FEATURES and Manifest.read(idx).delta == second.delta

    data = json.loads((idx / "manifest.json").read_text())
    data["requires"] = ["delta", "sharded-lists"]  # what a newer lookalike might write
    photos = tmp_path / "photos"
    photos.mkdir()
    (idx / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="newer lookalike and needs sharded-lists"):
        Manifest.read(idx)
    with pytest.raises(IndexFormatError, match="sharded-lists"):
        Engine(idx)
    with pytest.raises(IndexFormatError, match="sharded-lists"):
        build_index(photos, idx)  # the indexer does not overwrite it either


def test_readers_answer_from_the_base_and_the_delta(tmp_path: Path) -> None:
    idx, store, mid, first = first_publish(tmp_path)
    changes = change_some(idx, store, mid, seq=2)
    publish_now(idx, store, mid, first, "hnsw", seq=2)
    engine = Engine(idx)
    try:
        snap = engine.snapshot()
        assert snap.delta is not None and snap.search.ntotal == N + 80
        for group in ("new", "changed"):  # found as stored now, with their rows
            for i in changes[group][:20].tolist():
                hits = engine.search_vector(store.get([i])[0], k=1)
                assert hits[0].id == i and hits[0].path == f"img_{i:07d}.jpg"
        removed = set(changes["removed"].tolist())
        for i in changes["removed"][:3].tolist():
            with pytest.raises(NotFound):
                engine.search_id(int(i))
        assert engine.search_id(42, k=50)  # an old image: from the base's table, corrected
        assert engine.precomputed(1001, k=10) is not None  # the table still answers by id ...
        hits = engine.search_id(1001, k=10)
        assert hits[0].id == N + 1  # ... with the near copy added since, which only the delta holds
        ids, vecs = store.all_vectors()
        rng = np.random.default_rng(5)
        recall = []
        for i in rng.choice(np.arange(1001, N + 1), 40, replace=False).tolist():
            got = [h.id for h in engine.search_id(i, k=10)]
            assert not removed & set(got)
            sims = vecs @ vecs[np.searchsorted(ids, i)]
            truth = [int(j) for j in ids[np.argsort(-sims)] if j != i][:10]
            recall.append(len(set(got) & set(truth)) / 10)
        assert np.mean(recall) >= 0.9
        # A renamed image shows its new path (its vector did not change, so it is not in the delta).
        assert engine.search_vector(store.get([41])[0], k=1)[0].path == "renamed/forty-one.jpg"
    finally:
        engine.close()


def test_the_report_finds_pairs_the_delta_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from search.reports import duplicates

    monkeypatch.setattr(duplicates, "EXACT_MAX", 100)  # the index, not an exact kNN, proposes the pairs
    idx, store, mid, first = first_publish(tmp_path)
    change_some(idx, store, mid, seq=2)
    publish_now(idx, store, mid, first, "hnsw", seq=2)
    engine = Engine(idx)
    try:
        report = near_duplicates(engine, phash=False)
        assert report.method.startswith("index")
        pairs = {frozenset(m.id for m in g.members) for groups in report.groups.values() for g in groups}
        for j in range(10):  # each near copy added since the base, with its original
            assert frozenset({1001 + j, N + 1 + j}) in pairs
    finally:
        engine.close()


def test_past_its_bounds_the_index_is_built_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "DELTA_MAX", 50)
    idx, store, mid, first = first_publish(tmp_path)
    change_some(idx, store, mid, seq=2)  # 120 to search exactly: more than 50
    second = publish_now(idx, store, mid, first, "hnsw", seq=2)
    assert not second.delta and "reused" not in second.reason
    assert not os.path.samefile(first.files(idx) / SEARCH, second.files(idx) / SEARCH)
    assert not (second.files(idx) / DELTA).exists() and not (idx / DELTA).exists()
    with Engine(idx) as engine:
        assert engine.snapshot().delta is None and engine.snapshot().search.ntotal == N + 80


def test_below_the_size_a_delta_pays_off_the_index_is_built_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(delta, "DELTA_ABOVE", N + 1)
    idx, store, mid, first = first_publish(tmp_path)
    change_some(idx, store, mid, seq=2)
    assert not publish_now(idx, store, mid, first, "hnsw", seq=2).delta


def test_a_delta_over_the_on_disk_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "FLAT_MAX", 1_000)
    idx, store, mid, first = first_publish(tmp_path, ondisk.ONDISK)
    assert first.index_type == ondisk.ONDISK
    changes = change_some(idx, store, mid, seq=2)
    second = publish_now(idx, store, mid, first, ondisk.ONDISK, seq=2)
    assert second.delta["search"] == 120
    for name in (SEARCH, ondisk.SEARCH_DATA, delta.BASE_IDS):
        assert os.path.samefile(first.files(idx) / name, second.files(idx) / name)
    with Engine(idx) as engine:
        for i in np.concatenate([changes["new"][:10], changes["changed"][:10]]).tolist():
            assert engine.search_vector(store.get([i])[0], k=1)[0].id == i
        got = {h.id for h in engine.search_vector(store.get([1001])[0], k=20)}
        assert N + 1 in got and not got & set(changes["removed"].tolist())


# ---------------------------------------------------------------- through `lookalike index`


def test_index_runs_publish_deltas_and_a_damaged_delta_is_rebuilt(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import sample_images

    monkeypatch.setattr(delta, "DELTA_ABOVE", 1)
    monkeypatch.setattr(delta, "HIDDEN_MAX_SHARE", 1.0)  # one removed of ten images
    folder = tmp_path / "pics"
    folder.mkdir()
    images = sample_images(4)
    for src in images[:-2]:
        shutil.copy(src, folder / src.name)
    out = tmp_path / "index"
    build_index(folder, out, tiny_model, index_type="hnsw", progress=False, workers=1)
    first = Manifest.read(out)
    assert first is not None and not first.delta
    for src in images[-2:]:
        shutil.copy(src, folder / src.name)
    (folder / images[0].name).unlink()
    build_index(folder, out, tiny_model, index_type="hnsw", progress=False, workers=1)
    second = Manifest.read(out)
    assert second is not None and second.delta["search"] == 2 and second.delta["hide"] == 1
    with Engine(out) as engine:
        for src in images[-2:]:
            assert engine.search_path(src.name, k=3)  # the images added, searchable by path
            assert engine.search_image(folder / src.name, k=1)  # and as queries
        assert images[0].name not in {h.path for h in engine.search_path(images[1].name, k=20)}
    # The delta's rows damaged: the next run publishes the index built again, not the damage.
    (second.files(out) / HIT_ROWS_DELTA).write_bytes(b"not rows")
    build_index(folder, out, tiny_model, index_type="hnsw", progress=False, workers=1)
    third = Manifest.read(out)
    assert third is not None and not third.delta and third.generation == second.generation + 1
    with Engine(out) as engine:
        assert engine.snapshot().hit_rows is not None
        assert {h.path for h in engine.search_path(images[1].name, k=20)} == {s.name for s in images[1:]} - {
            images[1].name
        }
