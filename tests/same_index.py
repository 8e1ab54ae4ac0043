"""Comparing two indexes of one folder made by different routes (threads, Ray, another distributor):
the same catalog rows (ids aside, unless asked) and the same vectors, to float tolerance; and a route
that records which files it was asked to embed."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from encoder import Encoder
from indexer import VectorStore
from indexer.distribute import Shard, ShardResult, ThreadDistributor

ROW_COLUMNS = "path, status, size, mtime_ns, content_hash, width, height, format, error"


def index_state(index_dir: Path, with_ids: bool = False) -> tuple[dict[str, tuple], dict[str, np.ndarray]]:
    """(path -> catalog row without its id (`with_ids`: with it), path -> vector) of an index."""
    columns = ROW_COLUMNS + (", id" if with_ids else "")
    with sqlite3.connect(index_dir / "catalog.sqlite") as db:
        rows = {r[0]: r[1:] for r in db.execute(f"SELECT {columns} FROM images")}
        ids = dict(db.execute("SELECT path, id FROM images WHERE status = 'ok'").fetchall())
    store = VectorStore.load(index_dir / "vectors.faiss")
    return rows, {path: store.get([i])[0] for path, i in ids.items()}


def assert_same_index(a: Path, b: Path, atol: float = 1e-4, with_ids: bool = False) -> int:
    """The two indexes hold the same rows (ids aside, unless `with_ids`) and the same vectors;
    returns how many are ok."""
    rows_a, vec_a = index_state(a, with_ids)
    rows_b, vec_b = index_state(b, with_ids)
    assert rows_a == rows_b
    assert vec_a.keys() == vec_b.keys()
    diff = max(float(np.abs(vec_a[p] - vec_b[p]).max()) for p in vec_a)
    assert diff < atol, diff
    return len(vec_a)


class RecordingThreads:
    """This machine's threads, recording the files they are asked to embed (in `asked`)."""

    name = "threads, recorded"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        self.asked += [p for s in shards for p in s.paths]
        yield from ThreadDistributor(workers=1).embed(encoder, shards, max_pixels, spool)
