"""Generations: a publish switches readers to a whole new generation at once (issue 14).

A writer SIGKILLed at any point of a publish, with or without a model change, leaves an index
that a server opens whole: the generation it opens answers by-id queries exactly as a live search
of that generation's own vectors, and embeds queries with the model that made them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
from cli_process import run_cli
from conftest import REPO, write_jpeg

from encoder.checkpoint import model_id
from indexer import Catalog, Manifest, build_index
from indexer.delta import BASE_IDS, DELTA, HIT_ROWS_DELTA
from indexer.generations import KILL_AT_ENV
from indexer.layout import GENERATIONS, HIT_ROWS, MANIFEST, MODEL_DIR, NEIGHBOURS, SEGMENT_LIST, SEGMENTS, STORE
from search.engine import Engine

#: The points every publish ends with: the model linked, the generation sealed, the pointer switch
#: and the removal of old generations.
COMMIT_POINTS = ("generation:model", "generation:manifest", "generation:synced", "pointer", "cleanup")
#: Every point of a publish where the writer is killed (KILL_AT_ENV): each working file written,
#: each file linked into the new generation, then COMMIT_POINTS.
FLAT_POINTS = (
    "publish:begin",
    "publish:store",
    "publish:neighbours",
    "publish:hit_rows",
    "generation:dir",
    f"generation:{STORE}",
    f"generation:{NEIGHBOURS}",
    f"generation:{HIT_ROWS}",
    *COMMIT_POINTS,
)
#: An approximate index adds its own file, written and linked; its exact vectors are the segments
#: linked into the generation (no vectors.faiss).
APPROXIMATE_POINTS = (
    "publish:search",
    "generation:search.faiss",
    f"generation:{SEGMENTS}/{SEGMENT_LIST}",
    *(point for point in FLAT_POINTS if point != f"generation:{STORE}"),
)


def run_index(folder: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    argv = ["index", str(folder), "--workers", "0", "--batch-size", "8", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(KILL_AT_ENV, None)
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    return run_cli(argv, env=env, cwd=REPO)


def assert_answers_as_live_search(index: Path) -> Manifest:
    """Open the index as a server does; every by-id answer (from the precomputed table) must be
    what a live search of the vectors of the generation it opened answers. Returns its manifest."""
    eng = Engine(index, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        m = snap.manifest
        ids = snap.vectors.ids()  # ascending
        assert snap.encoder.model_id == m.model_id, "the model is not the one that made the vectors"
        assert len(ids) == m.count == snap.search.ntotal
        assert snap.neighbours is not None and np.array_equal(snap.neighbour_ids, ids)
        assert snap.hit_rows is not None and np.array_equal(snap.hit_rows.ids, ids)
        for i in ids.tolist():
            assert eng.precomputed(i, k=5) is not None  # answered from the table, not by a search
            table = eng.search_id(i, k=5)
            live = eng.search_vector(eng.vector(i), k=5, exclude_id=i)
            assert [h.id for h in table] == [h.id for h in live], f"id {i}: table and live search differ"
            assert np.allclose([h.similarity for h in table], [h.similarity for h in live], atol=1e-5)
        return m
    finally:
        eng.close()


def other_than(index: Path, *models: Path) -> Path:
    """The model of `models` that the index's model directory does not hold: a model change."""
    current = model_id(index / MODEL_DIR)
    return next(m for m in models if model_id(m) != current)


def test_a_publish_makes_a_generation_and_moves_the_pointer_last(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "pics"
    for i in range(12):
        write_jpeg(folder / f"img_{i:02d}.jpg", (64, 48), seed=i)
    idx = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, progress=False, workers=0)
    m = Manifest.read(idx)
    gen = idx / m.directory
    assert m.directory == f"{GENERATIONS}/1" and Manifest.read(gen) == m
    for name in (STORE, NEIGHBOURS, HIT_ROWS):  # hard links to the writer's files: no copies
        assert (gen / name).samefile(idx / name)
    assert model_id(gen / MODEL_DIR) == m.model_id

    # Killed just before the switch: the new generation is complete, but readers still open the old one.
    write_jpeg(folder / "new_0.jpg", seed=100)
    assert run_index(folder, kill_at="generation:synced").returncode == -signal.SIGKILL
    assert Manifest.read(idx).directory == f"{GENERATIONS}/1" and (idx / GENERATIONS / "2" / MANIFEST).exists()
    assert assert_answers_as_live_search(idx).count == 12

    # The next run publishes its own generation 2; each later one removes those before the previous.
    for i in range(1, 4):
        write_jpeg(folder / f"new_{i}.jpg", seed=100 + i)
        build_index(folder, progress=False, workers=0)
        m = Manifest.read(idx)
        assert m.generation == i + 1 and m.count == 13 + i
        assert sorted(p.name for p in (idx / GENERATIONS).iterdir()) == sorted({str(i), str(i + 1)})
    assert assert_answers_as_live_search(idx) == m


def test_an_index_from_before_generations_opens_and_is_upgraded(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "pics"
    for i in range(12):
        write_jpeg(folder / f"img_{i:02d}.jpg", (64, 48), seed=i)
    idx = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, progress=False, workers=0)
    # The previous version's layout: every file at the top, a manifest that names no directory.
    shutil.rmtree(idx / GENERATIONS)
    old = json.loads((idx / MANIFEST).read_text())
    for key in ("directory", "store_seq"):
        del old[key]
    (idx / MANIFEST).write_text(json.dumps(old))
    assert Manifest.read(idx).directory == ""
    assert assert_answers_as_live_search(idx).generation == 1

    summary = build_index(folder, progress=False, workers=0)
    assert summary.embedded == 0
    m = Manifest.read(idx)
    assert m.directory == f"{GENERATIONS}/2" and (idx / m.directory / STORE).samefile(idx / STORE)
    assert assert_answers_as_live_search(idx) == m


def test_sigkill_at_every_point_of_a_publish_leaves_a_whole_generation(
    tmp_path: Path, tiny_model: Path, other_model: Path
) -> None:
    folder = tmp_path / "pics"
    for i in range(16):
        write_jpeg(folder / f"d{i % 2}" / f"img_{i:02d}.jpg", (64, 48), seed=i)
    idx = folder / ".lookalike"
    # Two generations to start with, so that the kill at "cleanup" has an old one to remove.
    build_index(folder, model_dir=tiny_model, progress=False, workers=0)
    write_jpeg(folder / "extra.jpg", seed=99)
    build_index(folder, progress=False, workers=0)

    runs = [((), point) for point in FLAT_POINTS]  # new images, the same model, a flat index
    runs += [(("--reembed", "--index-type", "hnsw"), point) for point in APPROXIMATE_POINTS]  # a new model
    kills = 0
    for n, (extra, point) in enumerate(runs):
        if extra:
            extra = ("--model", str(other_than(idx, tiny_model, other_model)), *extra)
        else:
            write_jpeg(folder / "d2" / f"new_{n:02d}.jpg", seed=1000 + n)  # something to publish
        done = run_index(folder, *extra, kill_at=point)
        assert done.returncode == -signal.SIGKILL, f"{point}: not killed\n{done.stdout.decode()}"
        kills += 1
        m = assert_answers_as_live_search(idx)
        current = int(m.directory.rsplit("/", 1)[1])
        assert m.generation == current
    assert kills >= 20

    # A normal run finishes the work: every image indexed with the index's model, leftovers gone.
    done = run_index(folder)
    assert done.returncode == 0, done.stdout.decode()
    m = assert_answers_as_live_search(idx)
    assert m.model_id == model_id(idx / MODEL_DIR) and m.index_type == "hnsw"
    cat = Catalog.for_directory(idx)
    try:
        assert m.count == cat.count("ok") == 16 + 1 + len(FLAT_POINTS)
        assert m.store_seq == cat.store_seq()
    finally:
        cat.close()
    assert len(list((idx / GENERATIONS).iterdir())) <= 2


#: A publish that reuses the search index with a delta (indexer/delta.py) links the base's files
#: and writes the delta's own.
DELTA_POINTS = (
    "publish:begin",
    "publish:store",
    "publish:search",
    "publish:neighbours",
    "publish:hit_rows",
    "generation:dir",
    f"generation:{SEGMENTS}/{SEGMENT_LIST}",
    "generation:search.faiss",
    f"generation:{BASE_IDS}",
    f"generation:{DELTA}",
    f"generation:{HIT_ROWS_DELTA}",
    f"generation:{NEIGHBOURS}",
    f"generation:{HIT_ROWS}",
    *COMMIT_POINTS,
)
#: `lookalike index` with deltas allowed over any base (the real bound is 100,000 vectors).
DELTA_BOUNDS = {"indexer.delta.DELTA_ABOVE": 1, "indexer.delta.HIDDEN_MAX_SHARE": 1.0}


def assert_answers_through_the_delta(index: Path) -> Manifest:
    """Open the index as a server does; each by-id answer (the base's table, corrected for the
    delta, or a search) is what a live search of the generation's own vectors answers."""
    eng = Engine(index, device="cpu", reload_check_s=3600)
    try:
        snap = eng.snapshot()
        ids = snap.vectors.ids()
        assert len(ids) == snap.manifest.count == snap.search.ntotal
        assert snap.hit_rows is not None
        for i in ids.tolist():
            table = eng.search_id(i, k=5)
            live = eng.search_vector(eng.vector(i), k=5, exclude_id=i)
            assert [h.id for h in table] == [h.id for h in live], f"id {i}: table and live search differ"
            assert {h.id for h in table} <= set(ids.tolist())
        return snap.manifest
    finally:
        eng.close()


def test_sigkill_at_every_point_of_a_delta_publish_leaves_a_whole_generation(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "pics"
    for i in range(16):
        write_jpeg(folder / f"d{i % 2}" / f"img_{i:02d}.jpg", (64, 48), seed=i)
    idx = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, index_type="hnsw", progress=False, workers=0)
    write_jpeg(folder / "extra.jpg", seed=99)
    build_index(folder, index_type="hnsw", progress=False, workers=0)  # two generations, as above
    base = Manifest.read(idx)
    assert base is not None and not base.delta

    def run(kill_at: str | None) -> subprocess.CompletedProcess:
        argv = ["index", str(folder), "--workers", "0", "--index-type", "hnsw"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop(KILL_AT_ENV, None)
        if kill_at is not None:
            env[KILL_AT_ENV] = kill_at
        return run_cli(argv, env=env, cwd=REPO, patch=DELTA_BOUNDS)

    for n, point in enumerate(DELTA_POINTS):
        write_jpeg(folder / "d2" / f"new_{n:02d}.jpg", seed=1000 + n)
        done = run(point)
        assert done.returncode == -signal.SIGKILL, f"{point}: not killed\n{done.stdout.decode()}"
        assert_answers_through_the_delta(idx)
    done = run(None)
    assert done.returncode == 0, done.stdout.decode()
    m = assert_answers_through_the_delta(idx)
    assert m.delta["search"] == len(DELTA_POINTS) and m.delta["base_generation"] == base.generation
    assert m.count == 17 + len(DELTA_POINTS)
    # Without the test's bounds (100,000 vectors at least) the next change builds the index again.
    write_jpeg(folder / "last.jpg", seed=5000)
    done = run_index(folder, "--index-type", "hnsw")
    assert done.returncode == 0, done.stdout.decode()
    m = assert_answers_as_live_search(idx)
    assert not m.delta and not (m.files(idx) / DELTA).exists()


def test_a_delta_after_a_killed_full_publish_reuses_the_published_index_not_the_killed_runs(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A full publish killed once its search index is written leaves working files newer than the
    published generation's; a delta over that generation must link the generation's own files, not
    those (`restore_working`), or the delta's vectors would be searched twice."""
    folder = tmp_path / "pics"
    for i in range(16):
        write_jpeg(folder / f"d{i % 2}" / f"img_{i:02d}.jpg", (64, 48), seed=i)
    idx = folder / ".lookalike"
    build_index(folder, model_dir=tiny_model, index_type="hnsw", progress=False, workers=0)
    base = Manifest.read(idx)
    assert base is not None

    argv = ["index", str(folder), "--workers", "0", "--index-type", "hnsw"]
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_AT_ENV: "publish:search"}
    write_jpeg(folder / "d2" / "killed.jpg", seed=500)
    no_delta = {**DELTA_BOUNDS, "indexer.delta.DELTA_ABOVE": 10**9}  # a full publish
    done = run_cli(argv, env=env, cwd=REPO, patch=no_delta)
    assert done.returncode == -signal.SIGKILL, done.stdout.decode()
    assert Manifest.read(idx).generation == base.generation

    write_jpeg(folder / "d2" / "after.jpg", seed=501)
    env.pop(KILL_AT_ENV)
    done = run_cli(argv, env=env, cwd=REPO, patch=DELTA_BOUNDS)
    assert done.returncode == 0, done.stdout.decode()
    m = assert_answers_through_the_delta(idx)
    assert m.delta and m.delta["base_generation"] == base.generation and m.delta["search"] == 2
    assert m.count == 18
