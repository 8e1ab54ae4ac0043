"""build_index on real folders: awkward contents, change cycles, model changes, schema migration.

Tests that take `catalog_url` run twice: with the index's own SQLite catalog and with a PostgreSQL
one (tests/postgres.py). Only the first build is given the URL: the index records it, and every
later build, reader and `Catalog.for_directory` finds it there, as a user's next run would."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_images, write_jpeg
from PIL import Image

from indexer import Catalog, CatalogError, IndexBuildError, Manifest, VectorStore, build_index, plan_index
from indexer.catalog import SCHEMA_VERSION
from indexer.segments import SegmentStore


def state(index_dir: Path) -> tuple[dict[str, int], set[int]]:
    """(path -> id of every ok row, ids in the vector store)."""
    cat = Catalog.for_directory(index_dir)
    with cat.engine.connect() as c:
        rows = dict(c.exec_driver_sql("SELECT path, id FROM images WHERE status = 'ok'").all())
    cat.close()
    store = VectorStore.load(index_dir / "vectors.faiss")
    return rows, set(store.ids().tolist())


def corpus(folder: Path) -> list[Path]:
    """The folder's PNGs, not the index's own pictures."""
    return sorted(p for p in folder.rglob("*.png") if ".lookalike" not in p.parts)


def assert_consistent(index_dir: Path) -> dict[str, int]:
    rows, ids = state(index_dir)
    assert set(rows.values()) == ids
    m = Manifest.read(index_dir)
    assert m is not None and m.count == len(ids)
    return rows


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for i, src in enumerate(sample_images(3)):
        dst = root / ("a" if i % 2 else "b") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def test_awkward_folder(folder: Path, tiny_model: Path, bad_files: dict[str, Path], catalog_url: str | None) -> None:
    (folder / "deep" / "er" / "est").mkdir(parents=True)
    shutil.copy(sample_images(1)[0], folder / "deep" / "er" / "est" / "ünïcødé 名前 (1).png")
    shutil.copy(sample_images(1)[0], folder / "deep" / "with space & 'quote'.PNG")
    for path in bad_files.values():
        shutil.copy(path, folder / path.name)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / ".hidden").mkdir()
    shutil.copy(sample_images(1)[0], folder / ".hidden" / "secret.png")
    (folder / "readme.txt").write_text("not an image, not image-named")
    summary = build_index(folder, model_dir=tiny_model, progress=False, catalog_url=catalog_url)
    failed = dict(summary.failed)
    assert set(failed) == {"empty.jpg", "truncated.jpg", "notes.png", "truncated.png"}
    assert all(failed.values())
    assert "empty" in failed["empty.jpg"] and "not a recognised" in failed["notes.png"]
    rows = assert_consistent(folder / ".lookalike")
    assert "deep/er/est/ünïcødé 名前 (1).png" in rows
    assert not any(p.startswith((".hidden", "loop", ".lookalike")) for p in rows)
    # 9 sample images + 2 copies: the copies are byte-identical to the first sample image
    assert summary.added == 11 and summary.duplicates == 2
    # failed files are recorded with their reason, and not retried while unchanged
    cat = Catalog.for_directory(folder / ".lookalike")
    rec = cat.get_by_path("notes.png")
    assert rec is not None and rec.status == "failed" and "not a recognised" in rec.error
    cat.close()
    again = build_index(folder, model_dir=tiny_model, progress=False)
    assert again.embedded == 0 and again.failed == [] and again.unchanged == 15


def test_add_change_move_delete_cycle(folder: Path, tiny_model: Path, catalog_url: str | None) -> None:
    idx = folder / ".lookalike"
    first = build_index(folder, model_dir=tiny_model, progress=False, catalog_url=catalog_url)
    assert first.added == 9
    rows1 = assert_consistent(idx)
    store1 = VectorStore.load(idx / "vectors.faiss")

    # no change: nothing decoded, and fast
    t = time.perf_counter()
    second = build_index(folder, progress=False)
    assert (second.embedded, second.unchanged) == (0, 9)
    assert time.perf_counter() - t < max(1.0, first.duration_s)

    # change one file's content, touch another without changing it
    changed = corpus(folder)[0]
    Image.open(changed).convert("RGB").rotate(90).save(changed)
    touched = corpus(folder)[1]
    os.utime(touched, (time.time() + 5, time.time() + 5))
    # move one into a new folder, delete another, add a new one
    moved_src = corpus(folder)[2]
    moved_rel = moved_src.relative_to(folder).as_posix()
    (folder / "new_place").mkdir()
    moved_dst = folder / "new_place" / "renamed.png"
    os.replace(moved_src, moved_dst)
    deleted = corpus(folder)[3]
    deleted_rel = deleted.relative_to(folder).as_posix()
    deleted.unlink()
    write_jpeg(folder / "a" / "fresh.jpg", (80, 60), seed=3)

    third = build_index(folder, progress=False)
    assert (third.added, third.updated, third.moved, third.removed) == (1, 1, 1, 1)
    assert third.embedded == 2  # the changed file and the new one: the move kept its vector
    rows3 = assert_consistent(idx)
    assert rows3["new_place/renamed.png"] == rows1[moved_rel]
    assert deleted_rel not in rows3
    store3 = VectorStore.load(idx / "vectors.faiss")
    moved_id = rows1[moved_rel]
    assert np.array_equal(store1.get([moved_id]), store3.get([moved_id]))
    changed_id = rows1[changed.relative_to(folder).as_posix()]
    assert rows3[changed.relative_to(folder).as_posix()] == changed_id
    assert not np.allclose(store1.get([changed_id]), store3.get([changed_id]))


def test_exact_duplicates_share_vector(folder: Path, tiny_model: Path, catalog_url: str | None) -> None:
    src = corpus(folder)[0]
    shutil.copy(src, folder / "copy1.png")
    shutil.copy(src, folder / "a" / "copy2.png")
    summary = build_index(folder, model_dir=tiny_model, progress=False, catalog_url=catalog_url)
    assert summary.duplicates == 2
    assert summary.embedded == 9  # 9 distinct files decoded; the 2 copies were not
    cat = Catalog.for_directory(folder / ".lookalike")
    group = [cat.get_by_path(p) for p in (src.relative_to(folder).as_posix(), "copy1.png", "a/copy2.png")]
    first = min(r.id for r in group)
    assert sorted((r.duplicate_of for r in group), key=str) == [first, first, None]
    store = VectorStore.load(folder / ".lookalike" / "vectors.faiss")
    vecs = store.get([r.id for r in group])
    assert np.array_equal(vecs[0], vecs[1]) and np.array_equal(vecs[0], vecs[2])
    cat.close()
    # deleting the original re-points the remaining copies to each other
    src.unlink()
    build_index(folder, progress=False)
    cat = Catalog.for_directory(folder / ".lookalike")
    c1, c2 = cat.get_by_path("copy1.png"), cat.get_by_path("a/copy2.png")
    assert {c1.duplicate_of, c2.duplicate_of} == {None, min(c1.id, c2.id)}
    cat.close()


def test_model_mismatch_refused_then_reembed(
    folder: Path, tiny_model: Path, other_model: Path, catalog_url: str | None
) -> None:
    build_index(folder, model_dir=tiny_model, progress=False, catalog_url=catalog_url)
    v1 = VectorStore.load(folder / ".lookalike" / "vectors.faiss").all_vectors()[1]
    with pytest.raises(IndexBuildError, match="--reembed"):
        build_index(folder, model_dir=other_model, progress=False)
    # the refusal changed nothing
    assert np.array_equal(v1, VectorStore.load(folder / ".lookalike" / "vectors.faiss").all_vectors()[1])
    summary = build_index(folder, model_dir=other_model, reembed=True, progress=False)
    assert summary.embedded == 9
    assert_consistent(folder / ".lookalike")
    m = Manifest.read(folder / ".lookalike")
    from encoder import model_id

    assert m.model_id == model_id(other_model) == model_id(folder / ".lookalike" / "model")


def test_index_elsewhere_and_copyable(folder: Path, tiny_model: Path, tmp_path: Path) -> None:
    idx = tmp_path / "myindex"
    build_index(folder, idx, tiny_model, progress=False)
    copy = tmp_path / "copied"
    shutil.copytree(idx, copy)
    again = build_index(folder, copy, progress=False)  # the copy carries its model
    assert again.embedded == 0 and again.unchanged == 9


def test_trains_a_model_when_none(tmp_path: Path) -> None:
    from encoder import ModelConfig, TrainConfig

    root = tmp_path / "p"
    root.mkdir()
    for src in sample_images(2):
        shutil.copy(src, root / src.name)
    summary = build_index(
        root,
        model_config=ModelConfig(image_size=32, channels=(8, 16), latent_dim=8),
        train_config=TrainConfig(epochs=1, batch_size=4),
        progress=False,
    )
    assert summary.trained and summary.added == 6
    assert 0 < summary.train_s < summary.duration_s  # the rate is of indexing, not of training
    assert summary.images_per_second > summary.embedded / summary.duration_s
    assert (root / ".lookalike" / "model" / "loss.png").exists()


def test_plan_index_follows_size() -> None:
    assert plan_index(1_000, 128).index_type == "flat"
    assert plan_index(2_000_000, 128).index_type == "hnsw"
    pq = plan_index(50_000, 128, "ivfpq")
    assert pq.index_type == "ivfpq" and pq.params["m"] == 16 and pq.reason
    assert plan_index(100, 128, "ivfpq").index_type == "flat"  # too few to train: says so
    with pytest.raises(ValueError):
        plan_index(10, 8, "bogus")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_requested_index_types_search(folder: Path, tiny_model: Path, kind: str) -> None:
    for i in range(40):
        write_jpeg(folder / "gen" / f"{i}.jpg", (48, 48), seed=100 + i)
    summary = build_index(folder, model_dir=tiny_model, index_type=kind, progress=False)
    assert summary.index_type == kind
    from indexer import read_search_index

    m = Manifest.read(folder / ".lookalike")
    index = read_search_index(folder / ".lookalike" / m.search_file, m.params)
    assert not (folder / ".lookalike" / "vectors.faiss").exists()  # not flat: the vectors are the segments
    ids, vecs = SegmentStore.open(folder / ".lookalike" / "segments", 0, writable=False).all_vectors()
    _, found = index.search(vecs[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()


def _clustered(n: int, dim: int = 64, noise: float = 3.0, seed: int = 0) -> VectorStore:
    """Unit vectors around 40 centres, noisy enough that approximate search has to work for its recall."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + noise * rng.normal(size=(n, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    store = VectorStore(dim)
    store.add(np.arange(1, n + 1, dtype=np.int64), x)
    return store


def _recall(index, store: VectorStore, qids: np.ndarray, k: int = 10) -> float:
    q = store.get(qids)
    _, exact = store.index.search(q, k + 1)
    _, found = index.search(q, k + 1)
    found_per_query = zip(exact, found, qids, strict=True)
    recalls = [len(set(e[e != i][:k].tolist()) & set(f[f != i][:k].tolist())) / k for e, f, i in found_per_query]
    return float(np.mean(recalls))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_search_effort_is_tuned_to_the_recall_target(kind: str) -> None:
    from indexer.vectors import (
        EF_LADDER,
        NPROBE_LADDER,
        RECALL_TARGET,
        IndexPlan,
        apply_search_params,
        build_search_index,
        tune_search,
    )

    store = _clustered(6000)
    if kind == "hnsw":  # a sparse graph, so that the default effort is not enough
        plan = IndexPlan("hnsw", {"M": 8, "efConstruction": 16, "efSearch": 96}, "test")
        key, lowest = "efSearch", EF_LADDER[0]
    else:
        plan = plan_index(len(store), store.dim, "ivf")
        key, lowest = "nprobe", NPROBE_LADDER[0]
    index = build_search_index(store, plan)
    tuned = tune_search(index, store, plan)
    assert tuned.params["recall_at_10"] >= RECALL_TARGET and "recall@10" in tuned.reason
    assert tuned.params[key] > lowest  # the ladder was climbed
    # The recorded recall holds on other queries, and the least effort would not have done.
    fresh = np.random.default_rng(7).choice(store.ids(), 300, replace=False)
    apply_search_params(index, {key: tuned.params[key]})
    assert _recall(index, store, fresh) >= RECALL_TARGET - 0.03
    apply_search_params(index, {key: lowest})
    assert _recall(index, store, fresh) < RECALL_TARGET
    if kind == "ivf":
        assert tuned.params["nprobe"] <= plan.params["nlist"]

    # An unreachable target stops at the top of the ladder or where recall stops improving,
    # and says so.
    hard = tune_search(index, store, plan, target=1.01)
    assert hard.params[key] >= tuned.params[key] and "below the 1.01 target" in hard.reason


def test_published_manifest_records_the_tuned_recall(tmp_path: Path) -> None:
    from indexer import read_search_index
    from indexer.publish import publish

    store = _clustered(3000)
    m = publish(tmp_path, store, plan_index(len(store), store.dim, "hnsw"), "m0", None)
    again = Manifest.read(tmp_path)
    assert again.params["efSearch"] == m.params["efSearch"] and again.params["recall_at_10"] >= 0.95
    index = read_search_index(tmp_path / again.search_file, again.params)  # what the engine opens
    assert _recall(index, store, store.ids()[:200]) >= 0.9


def test_second_writer_is_refused(folder: Path, tiny_model: Path) -> None:
    import fcntl

    idx = folder / ".lookalike"
    idx.mkdir()
    with open(idx / "lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(IndexBuildError, match="another"):
            build_index(folder, model_dir=tiny_model, progress=False)


def test_schema_migration_from_v1(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        """
        CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE models (id VARCHAR(32) PRIMARY KEY, kind VARCHAR(32), config_json TEXT, created_at DATETIME);
        CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, path VARCHAR(4096) UNIQUE, size BIGINT,
            mtime_ns BIGINT, content_hash VARCHAR(64), width INTEGER, height INTEGER, format VARCHAR(16),
            status VARCHAR(16), error TEXT, embedded_at DATETIME, model_id VARCHAR(32));
        INSERT INTO images (path, size, mtime_ns, status) VALUES ('x.png', 1, 1, 'ok');
        """
    )
    con.commit()
    con.close()
    with pytest.raises(CatalogError, match="v1"):
        Catalog.for_directory(tmp_path, read_only=True)
    cat = Catalog.for_directory(tmp_path)
    assert cat.schema_version() == SCHEMA_VERSION
    rec = cat.get_by_path("x.png")
    assert rec.duplicate_of is None and rec.vector_seq == 0
    cat.close()


def test_hit_rows_fast_path_matches_the_orm(tmp_path: Path, catalog_url: str | None) -> None:
    """SQLite's raw fast path and the portable query (PostgreSQL) against the ORM."""
    from indexer.catalog import STATUS_FAILED, STATUS_OK, ImageRecord

    cat = Catalog(catalog_url or f"sqlite:///{tmp_path / 'c.sqlite'}")
    with cat.session() as s, s.begin():
        for i in range(1200):  # more than one 500-id chunk
            status = STATUS_FAILED if i % 5 == 0 else STATUS_OK
            s.add(ImageRecord(path=f"d/ü {i}.png", size=i, mtime_ns=i, width=i % 7 or None, height=3, status=status))
    with cat.session() as s:
        expected = {r.id: (r.path, r.width, r.height) for r in s.query(ImageRecord).filter_by(status=STATUS_OK)}
    asked = [*range(1, 1300), 10**12]  # unknown ids are simply absent
    got = cat.hit_rows(asked)
    assert got == expected and len(got) == 960
    assert cat.hit_rows([]) == {}
    cat.close()


def test_readers_map_the_catalog_and_writers_do_not(tmp_path: Path) -> None:
    from indexer.catalog import READER_MMAP_BYTES

    writer = Catalog.for_directory(tmp_path)
    reader = Catalog.for_directory(tmp_path, read_only=True)
    try:
        with writer.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA mmap_size").scalar() != READER_MMAP_BYTES  # the build default
        with reader.engine.connect() as c:
            assert c.exec_driver_sql("PRAGMA mmap_size").scalar() == READER_MMAP_BYTES
    finally:
        reader.close()
        writer.close()


def test_temp_files_left_by_a_kill_are_removed_on_the_next_run(folder: Path, tiny_model: Path) -> None:
    build_index(folder, model_dir=tiny_model, progress=False)
    idx = folder / ".lookalike"
    left = [idx / ".vectors.faiss.k1.tmp", idx / ".neighbours.npy.k2.tmp", idx / ".hit_rows.bin.k3.tmp"]
    left.append(idx / "model" / ".model.safetensors.k4.tmp")
    for p in left:
        p.write_bytes(b"half a file")
    (idx / "thumbnails").mkdir(exist_ok=True)
    serving = idx / "thumbnails" / ".abc-256.jpg.k5.tmp"  # a running server may be writing this one
    serving.write_bytes(b"being written")
    mine = folder / ".notes.txt.tmp"  # the user's own files are not the index's to remove
    mine.write_bytes(b"mine")
    build_index(folder, progress=False)
    assert not any(p.exists() for p in left)
    assert serving.exists() and mine.exists()


def test_a_copy_of_a_corrupt_file_is_recorded_on_the_first_run(
    folder: Path, tiny_model: Path, catalog_url: str | None
) -> None:
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (folder / "a" / "bad copy.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    summary = build_index(folder, model_dir=tiny_model, progress=False, catalog_url=catalog_url)
    assert sorted(p for p, _ in summary.failed) == ["a/bad copy.jpg", "bad.jpg"]
    cat = Catalog.for_directory(folder / ".lookalike")
    rows = [cat.get_by_path(p) for p in ("bad.jpg", "a/bad copy.jpg")]
    cat.close()
    assert [r.status for r in rows] == ["failed", "failed"] and rows[0].error == rows[1].error
    assert build_index(folder, progress=False).failed == []  # nothing new to say on the second run
