"""The vector store as append-only segments (indexer/segments.py): what a checkpoint writes, merges,
damage, the move from a single-file store, and SIGKILL at every step of a segment write, a merge
and that move: the next run ends with every file indexed exactly once, with its vector."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_process import run_cli
from conftest import REPO, write_jpeg

from indexer import Catalog, Manifest, build_index
from indexer.generations import KILL_AT_ENV
from indexer.layout import SEGMENT_LIST, SEGMENTS, STORE
from indexer.segments import MAX_SEGMENTS, SegmentError, SegmentStore, plan_merge
from indexer.vectors import VectorStore

DIM = 8


def vecs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def assert_holds(store: SegmentStore, ref: dict[int, np.ndarray]) -> None:
    ids, got = store.all_vectors()
    assert ids.tolist() == sorted(ref)
    assert all(np.array_equal(ref[i], v) for i, v in zip(ids.tolist(), got, strict=True))


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime) of every file: a checkpoint must leave the existing ones alone."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


# ---------------------------------------------------------------- the store alone


def test_random_edits_survive_saves_reopens_and_merges(tmp_path: Path) -> None:
    directory = tmp_path / SEGMENTS
    rng = np.random.default_rng(1)
    ref: dict[int, np.ndarray] = {}
    saved: dict[int, np.ndarray] = {}
    store = SegmentStore.open(directory, DIM)
    for step in range(60):
        ids = rng.choice(300, size=12, replace=False)
        v = vecs(12, step)
        store.replace(ids, v)
        ref.update(zip(ids.tolist(), v, strict=True))
        gone = rng.choice(300, size=4, replace=False)
        assert store.remove(gone) == sum(int(i) in ref for i in gone)
        for i in gone.tolist():
            ref.pop(i, None)
        assert_holds(store, ref)  # unsaved edits read back at once
        if step % 2:
            store.save(seq=step)
            saved = dict(ref)
        if step % 5 == 0:
            store.merge_if_due()  # with unsaved edits pending, sometimes
            assert_holds(store, ref)
        if step % 7 == 0:
            store = SegmentStore.open(directory, DIM)  # unsaved edits are lost, as a kill would lose them
            assert_holds(store, saved)
            ref = dict(saved)
    store.save(seq=99)
    assert_holds(SegmentStore.open(directory, DIM), ref)
    store.merge()
    merged = SegmentStore.open(directory, DIM)
    assert len(merged.segments) == 1 and merged.dead_rows() == 0
    assert_holds(merged, ref)
    # nothing but the live segment's four files and the list is left
    assert len(list(directory.iterdir())) == 5


def test_a_checkpoint_writes_only_what_is_new(tmp_path: Path) -> None:
    directory = tmp_path / SEGMENTS
    store = SegmentStore.open(directory, DIM)
    store.add(np.arange(10_000), vecs(10_000, 0))
    store.save(seq=1)
    before = files(directory)
    old_bytes = sum((directory / n).stat().st_size for n in before if n != SEGMENT_LIST)
    store.replace(np.arange(10_000, 10_100), vecs(100, 1))
    store.remove([5, 6])
    assert store.save(seq=2)
    after = files(directory)
    for name, stamp in before.items():
        if name != SEGMENT_LIST:
            assert after[name] == stamp, f"{name} was written again"
    new = [n for n in after if n not in before]
    new_bytes = sum((directory / n).stat().st_size for n in new)
    assert len(new) == 4 and new_bytes < 0.02 * old_bytes  # 100 vectors and 2 tombstones, not 10,100 vectors
    assert not store.save(seq=3)  # nothing new: nothing written
    reopened = SegmentStore.open(directory, DIM)
    assert len(reopened) == 10_098 and 5 not in reopened.ids()
    assert np.array_equal(reopened.get([10_050, 7]), np.vstack([vecs(100, 1)[50], vecs(10_000, 0)[7]]))
    with pytest.raises(KeyError):
        reopened.get([5])


def test_merge_policy() -> None:
    assert plan_merge([100, 10, 10], live=120) is None
    assert plan_merge([100, 10, 10], live=80) == 0  # a third dead: everything
    small = [1_000_000] + [1_000] * MAX_SEGMENTS
    # the big base segment is left alone; the small ones after it are merged
    assert plan_merge(small, live=sum(small)) == 1
    assert plan_merge([10] * (MAX_SEGMENTS + 1), live=10 * (MAX_SEGMENTS + 1)) == 0


def test_merging_the_newest_segments_keeps_tombstones_for_older_ones(tmp_path: Path) -> None:
    directory = tmp_path / SEGMENTS
    store = SegmentStore.open(directory, DIM)
    store.add(np.arange(1000), vecs(1000, 0))
    store.save(seq=1)
    ref = dict(zip(range(1000), vecs(1000, 0), strict=True))
    for k in range(MAX_SEGMENTS - 1):  # 16 segments: not yet too many
        store.replace([k], vecs(1, 100 + k))  # replaces a row of the base segment
        store.add([2000 + k], vecs(1, 200 + k))
        store.remove([500 + k])
        ref[k], ref[2000 + k] = vecs(1, 100 + k)[0], vecs(1, 200 + k)[0]
        del ref[500 + k]
        store.save(seq=2 + k)
        assert not store.merge_if_due()
    store.add([3000], vecs(1, 3))
    ref[3000] = vecs(1, 3)[0]
    store.save(seq=20)
    base = store.segments[0].name
    assert store.merge_if_due()
    reopened = SegmentStore.open(directory, DIM)
    assert [s.name for s in reopened.segments][0] == base and len(reopened.segments) == 2
    assert_holds(reopened, ref)


def test_read_only_open_refuses_edits_and_damage(tmp_path: Path) -> None:
    directory = tmp_path / SEGMENTS
    store = SegmentStore.open(directory, DIM)
    store.add(np.arange(50), vecs(50, 0))
    store.save(seq=1)
    reader = SegmentStore.open(directory, 0, writable=False)
    assert reader.dim == DIM and isinstance(reader.segments[0].vectors, np.memmap)
    with pytest.raises(SegmentError):
        reader.add([99], vecs(1, 0))
    damage(directory, reader.segments[0].name, "truncate")
    with pytest.raises(SegmentError, match="bytes"):
        SegmentStore.open(directory, 0, writable=False)


def damage(directory: Path, name: str, how: str) -> None:
    """Break segment `name`: flip a byte of its vectors (a bad checksum), or cut its vectors short."""
    path = directory / f"{name}.vectors.npy"
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[-3] ^= 0xFF
    else:
        data = data[: len(data) - 17]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_the_writer_drops_a_damaged_segment_and_every_newer_one(tmp_path: Path, how: str) -> None:
    directory = tmp_path / SEGMENTS
    store = SegmentStore.open(directory, DIM)
    for seq in (1, 2, 3):
        store.add(np.arange(seq * 10, seq * 10 + 10), vecs(10, seq))
        store.save(seq=seq)
    damage(directory, store.segments[1].name, how)
    reopened = SegmentStore.open(directory, DIM)
    assert reopened.trusted_seq == 1  # rows saved at 2 and later lost their vectors
    assert reopened.ids().tolist() == list(range(10, 20))
    reopened.save(seq=4)  # the list without them is written; their files go
    assert len(list(directory.iterdir())) == 5


# ---------------------------------------------------------------- the indexer, killed


def make_folder(root: Path, n: int = 24) -> Path:
    for i in range(n):
        write_jpeg(root / f"d{i % 3}" / f"img_{i:02d}.jpg", (64, 48), seed=i)
    return root


def run_index(folder: Path, model: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    argv = ["index", str(folder), "--model", str(model), "--workers", "0"]
    argv += ["--batch-size", "8", "--checkpoint-every", "0"]  # a checkpoint (a segment) after every batch
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_ENV, None)
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    return run_cli(argv, env=env, cwd=REPO)


def indexed(idx: Path) -> dict[str, np.ndarray]:
    """path -> stored vector of every indexed file, asserting that the segments hold exactly the
    indexed rows' vectors (no vector without a row, no row without its vector)."""
    cat = Catalog.for_directory(idx)
    with cat.engine.connect() as c:
        rows = dict(c.exec_driver_sql("SELECT id, path FROM images WHERE status = 'ok'").all())
        assert c.exec_driver_sql("SELECT count(*) FROM images WHERE status != 'ok'").scalar() == 0
    cat.close()
    store = SegmentStore.open(idx / SEGMENTS, 0, writable=False)
    assert sorted(store.ids().tolist()) == sorted(rows)
    ids, v = store.all_vectors()
    return {rows[i]: vec for i, vec in zip(ids.tolist(), v, strict=True)}


def assert_same_vectors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for path, vec in want.items():
        assert np.allclose(got[path], vec, atol=1e-5), path  # batches of other sizes round differently


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, np.ndarray]:
    """Every file's vector from an index built without a kill."""
    folder = make_folder(tmp_path_factory.mktemp("reference") / "pics")
    build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    return indexed(folder / ".lookalike")


SEGMENT_POINTS = ["segment:ids", "segment:vectors", "segment:tombstones", "segment:header", "segment:list"]


@pytest.mark.parametrize("point", SEGMENT_POINTS)
def test_killed_while_writing_a_segment(tmp_path: Path, tiny_model: Path, reference: dict, point: str) -> None:
    folder = make_folder(tmp_path / "pics")
    killed = run_index(folder, tiny_model, kill_at=point)
    assert killed.returncode == -9, killed.stdout.decode() + killed.stderr.decode()
    summary = build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    assert summary.total == 24
    assert_same_vectors(indexed(folder / ".lookalike"), reference)


MERGE_POINTS = ["merge:ids", "merge:vectors", "merge:tombstones", "merge:header", "merge:list", "merge:retired"]


@pytest.mark.parametrize("point", MERGE_POINTS)
def test_killed_while_merging(tmp_path: Path, tiny_model: Path, point: str) -> None:
    """Half the files change after a first run: their new vectors supersede a third of the stored
    rows, and the checkpoint merges (the policy: over a quarter dead)."""
    folder = make_folder(tmp_path / "pics")
    assert run_index(folder, tiny_model).returncode == 0
    for i in range(0, 24, 2):
        write_jpeg(folder / f"d{i % 3}" / f"img_{i:02d}.jpg", (64, 48), seed=100 + i)
    killed = run_index(folder, tiny_model, kill_at=point)
    assert killed.returncode == -9, killed.stdout.decode() + killed.stderr.decode()
    build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    got = indexed(folder / ".lookalike")
    fresh = make_folder(tmp_path / "fresh")
    for i in range(0, 24, 2):
        write_jpeg(fresh / f"d{i % 3}" / f"img_{i:02d}.jpg", (64, 48), seed=100 + i)
    build_index(fresh, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    assert_same_vectors(got, indexed(fresh / ".lookalike"))
    assert len(SegmentStore.open(folder / ".lookalike" / SEGMENTS, 0, writable=False).segments) <= 3


def old_style_index(folder: Path, model: Path) -> Path:
    """An index as lookalike wrote it before segments: the store in one ``vectors.faiss``."""
    build_index(folder, model_dir=model, workers=0, batch_size=8, progress=False)
    idx = folder / ".lookalike"
    shutil.rmtree(idx / SEGMENTS)
    return idx


@pytest.mark.parametrize(
    "point", [None, "migrate:ids", "migrate:vectors", "migrate:tombstones", "migrate:header", "migrate:list"]
)
def test_a_single_file_store_moves_into_a_segment(
    tmp_path: Path, tiny_model: Path, reference: dict, point: str | None
) -> None:
    folder = make_folder(tmp_path / "pics")
    idx = old_style_index(folder, tiny_model)
    old = VectorStore.load(idx / STORE)
    if point is not None:
        killed = run_index(folder, tiny_model, kill_at=point)
        assert killed.returncode == -9, killed.stdout.decode() + killed.stderr.decode()
    summary = build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    assert summary.embedded == 0 and summary.unchanged == 24  # moved, not embedded again
    got = indexed(idx)
    assert_same_vectors(got, reference)
    ids, v = old.all_vectors()  # moved bit for bit
    store = SegmentStore.open(idx / SEGMENTS, 0, writable=False)
    assert np.array_equal(store.get(ids), v)
    assert json.loads((idx / SEGMENTS / SEGMENT_LIST).read_text())["segments"] == [store.segments[0].name]


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_segment_is_embedded_again(tmp_path: Path, tiny_model: Path, reference: dict, how: str) -> None:
    folder = make_folder(tmp_path / "pics")
    build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, checkpoint_every_s=0, progress=False)
    idx = folder / ".lookalike"
    store = SegmentStore.open(idx / SEGMENTS, 0, writable=False)
    assert len(store.segments) >= 2
    damage(idx / SEGMENTS, store.segments[-1].name, how)
    summary = build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, progress=False)
    assert 0 < summary.embedded < 24  # the damaged segment's files, not everything
    assert_same_vectors(indexed(idx), reference)


def test_a_generation_keeps_its_segments_when_a_merge_retires_them(tmp_path: Path, tiny_model: Path) -> None:
    """A publish links the live segments into its generation beside the flat ``vectors.faiss``; a
    later merge deletes the writer's inputs, and the published generation still reads whole."""
    folder = make_folder(tmp_path / "pics")
    build_index(folder, model_dir=tiny_model, workers=0, batch_size=8, checkpoint_every_s=0, progress=False)
    idx = folder / ".lookalike"
    gen = Manifest.read(idx).files(idx)
    published = SegmentStore.open(gen / SEGMENTS, 0, writable=False)
    flat = VectorStore.load(gen / STORE)
    assert np.array_equal(published.ids(), np.sort(flat.ids()))
    assert np.array_equal(published.get(flat.ids()), flat.all_vectors()[1])
    writer = SegmentStore.open(idx / SEGMENTS, 0)
    assert len(writer.segments) >= 2 and writer.merge()
    assert not any((idx / SEGMENTS / f"{s.name}.json").exists() for s in published.segments)
    again = SegmentStore.open(gen / SEGMENTS, 0, writable=False, verify=True)  # hard links: intact
    assert np.array_equal(again.get(flat.ids()), flat.all_vectors()[1])


def test_a_store_of_another_dimension_is_replaced_at_the_first_save(tmp_path: Path) -> None:
    """What `--reembed` with a model of another width does (indexer/build.py): an empty store takes
    the directory; the old segments stay the store until its first save, then their files go."""
    directory = tmp_path / SEGMENTS
    old = SegmentStore.open(directory, DIM)
    old.add(np.arange(20), vecs(20, 0))
    old.save(seq=1)
    assert SegmentStore.open(directory, 16).dim == DIM  # the stored width, for the caller to compare
    new = SegmentStore(directory, 16, [])
    assert SegmentStore.open(directory, 16).dim == DIM  # nothing written yet
    new.add([3], np.ones((1, 16), np.float32))
    new.save(seq=2)
    reopened = SegmentStore.open(directory, 16)
    assert reopened.dim == 16 and reopened.ids().tolist() == [3]
    assert len(list(directory.iterdir())) == 5


# ---------------------------------------------------------------- how a server reads rows


def _rss_file_kb() -> int:
    """This process's resident file-backed pages (kB): what its mappings of files hold in memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_a_servers_row_reads_match_the_mapping_and_leave_its_resident_set_alone(tmp_path: Path) -> None:
    """A server (advise_random) reads a re-rank's rows with pread: the same vectors as through the
    mapping, in any order, repeated, across segments, without mapping the file's pages into the
    process. Read through the mapping, the same reads make those pages resident (the contrast that
    shows the measurement can fail)."""
    from indexer.rowio import pread_rows

    dim, n = 256, 20_000  # 20 MB of vectors: 5,000 pages
    rng = np.random.default_rng(0)
    writer = SegmentStore.open(tmp_path, dim)
    first = rng.standard_normal((n, dim)).astype(np.float32)
    writer.add(np.arange(1, n + 1, dtype=np.int64), first)
    writer.save(seq=1)
    second = rng.standard_normal((100, dim)).astype(np.float32)
    writer.add(np.arange(n + 1, n + 101, dtype=np.int64), second)
    writer.save(seq=2)
    ref = np.concatenate([first, second])

    server = SegmentStore.open(tmp_path, dim, writable=False)
    plain = SegmentStore.open(tmp_path, dim, writable=False)
    assert server.advise_random() == 2
    batches = [rng.choice(n, 100, replace=False) + 1 for _ in range(30)]  # 3,000 rows, as 30 re-ranks
    odd = np.array([5, 3, 4, 4, n, n + 1, n + 100, 1, 2, 3], dtype=np.int64)  # runs, repeats, both files
    assert np.array_equal(server.get(odd), ref[odd - 1])
    assert np.array_equal(
        pread_rows(server.segments[0].vectors, np.array([7, 2, 3]), None, server._descriptor(0)), first[[7, 2, 3]]
    )

    before = _rss_file_kb()
    for ids in batches:
        assert np.array_equal(server.get(ids), ref[ids - 1])
    pread_growth = _rss_file_kb() - before
    before = _rss_file_kb()
    for ids in batches:
        plain.get(ids)
    mapped_growth = _rss_file_kb() - before
    assert mapped_growth > 4_000, f"reads through the mapping made only {mapped_growth} kB resident"
    assert pread_growth < 1_000, f"pread reads made {pread_growth} kB of file pages resident"
    server.close()
    assert not server._files
