"""SIGKILL `lookalike index` at several moments: the next run completes, nothing durable is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import REPO, write_jpeg

from indexer import Catalog, Manifest, VectorStore
from indexer.hit_rows import read_hit_rows
from indexer.layout import HIT_ROWS, NEIGHBOURS, SEGMENTS
from indexer.neighbours import fingerprints, read_neighbours
from indexer.segments import SegmentStore, has_segments

N = 400


def durable(index_dir: Path) -> dict[int, np.ndarray]:
    """Vectors that a finished save made durable: in the segments, with an ok row, not newer than the save."""
    if not has_segments(index_dir / SEGMENTS) or not (index_dir / "catalog.sqlite").exists():
        return {}
    cat = Catalog.for_directory(index_dir)
    seq = int(cat.get_meta("store_seq") or 0)
    with cat.engine.connect() as c:
        ok = {i for (i,) in c.exec_driver_sql(f"SELECT id FROM images WHERE status='ok' AND vector_seq <= {seq}")}
    cat.close()
    store = SegmentStore.open(index_dir / SEGMENTS, 0, writable=False)
    ids = [i for i in store.ids().tolist() if i in ok]
    return dict(zip(ids, store.get(ids), strict=True))


def run_index(folder: Path, model: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "search",
        "index",
        str(folder),
        "--model",
        str(model),
        "--workers",
        "1",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "0.1",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def saved_seq(index_dir: Path) -> int:
    """The writer's last completed store save, read straight from SQLite (cheap to poll)."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{index_dir / 'catalog.sqlite'}?mode=ro", uri=True, timeout=1)
        row = con.execute("SELECT value FROM meta WHERE key = 'store_seq'").fetchone()
        con.close()
        return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


def kill_when(proc: subprocess.Popen, index_dir: Path, moment: str) -> bool:
    """SIGKILL `proc` at `moment`: 'start' (during start-up) or 'saving' (right after a store save)."""
    deadline = time.monotonic() + 60
    if moment == "start":
        time.sleep(0.3)
    else:
        before = saved_seq(index_dir)
        while proc.poll() is None and saved_seq(index_dir) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return True


def test_sigkill_at_several_points(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "pics"
    for i in range(N):
        write_jpeg(folder / f"d{i % 4}" / f"img_{i:03d}.jpg", (96, 72), seed=i)
    idx = folder / ".lookalike"
    kept: dict[int, np.ndarray] = {}
    kills, partial = 0, 0
    for moment in ("start", "saving", "saving", "saving"):
        proc = run_index(folder, tiny_model)
        kills += kill_when(proc, idx, moment)
        now = durable(idx)
        # nothing made durable by an earlier run is lost or altered by a later killed one
        for i, vec in kept.items():
            assert i in now, f"vector {i} lost"
            assert np.array_equal(now[i], vec)
        kept = now
        partial += 0 < len(now) < N
    assert kills >= 3, "the runs finished before they could be killed"
    assert partial >= 1, "no kill landed mid-run with part of the folder saved"
    proc = run_index(folder, tiny_model)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    cat = Catalog.for_directory(idx)
    with cat.engine.connect() as c:
        rows = dict(c.exec_driver_sql("SELECT id, status FROM images").all())
    cat.close()
    store = VectorStore.load(idx / "vectors.faiss")
    assert len(rows) == N and set(rows.values()) == {"ok"}
    assert set(store.ids().tolist()) == set(rows)
    # The published flat store is the segments' vectors, whatever the kills left behind.
    segments = SegmentStore.open(idx / SEGMENTS, 0, writable=False)
    assert np.array_equal(segments.get(store.ids()), store.all_vectors()[1])
    assert Manifest.read(idx).count == N
    # The neighbour table describes exactly these vectors (fingerprints), whatever the kills left behind.
    table = read_neighbours(idx / NEIGHBOURS, Manifest.read(idx).neighbours_k)
    ids, vecs = store.all_vectors()
    order = np.argsort(ids)
    assert np.array_equal(table["id"], ids[order]) and np.array_equal(table["fp"], fingerprints(vecs[order]))
    # And the published hit rows are the catalog rows of exactly these images.
    hit_rows = read_hit_rows(idx / HIT_ROWS)
    assert hit_rows is not None and np.array_equal(hit_rows.ids, ids[order])
    cat = Catalog.for_directory(idx)
    assert hit_rows.get(ids.tolist()) == cat.hit_rows(ids.tolist())
    cat.close()
    final = durable(idx)
    for i, vec in kept.items():
        assert np.array_equal(final[i], vec)


def test_sigkill_while_training_resumes_the_training(tmp_path: Path) -> None:
    """`lookalike index` with no model trains one first; killed mid-training, the next run
    finishes that training (it does not index with the half-trained best epoch so far)."""
    from encoder import TrainConfig
    from indexer import build_index

    folder = tmp_path / "pics"
    for i in range(24):
        write_jpeg(folder / f"img_{i:02d}.jpg", (96, 72), seed=i)
    model = folder / ".lookalike" / "model"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "index", str(folder), "--workers", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and not (model / "checkpoint" / "state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (model / "model.safetensors").exists() and not (model / "train_log.json").exists()

    summary = build_index(folder, train_config=TrainConfig(epochs=3, batch_size=8), workers=0, progress=False)
    assert summary.trained and summary.added == 24
    log = (model / "train_log.json").read_text()
    assert '"epochs_run": 3' in log  # resumed and carried on to the end, not restarted from nothing
    # A finished model is kept as it is by the next run.
    again = build_index(folder, workers=0, progress=False)
    assert not again.trained and again.unchanged == 24
