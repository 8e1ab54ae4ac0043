"""Moving a store from before segments (one ``vectors.faiss`` file) into the segment layout, once.

The old file stays the store until the new list is written, so a kill at any point leaves one of
the two whole (kill points ``migrate:ids`` ... ``migrate:header``, ``migrate:list``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import faiss
import numpy as np

from .generations import kill_point
from .segment_file import next_name, write_list, write_segment
from .segments import row_chunks

log = logging.getLogger(__name__)


def migrate_store(faiss_path: Path, directory: Path, *, seq: int) -> None:
    """Turn the single-file store at `faiss_path` into a first segment in `directory` holding saves
    0..`seq`, then write the list naming it (the module doc says why that order)."""
    index = faiss.read_index(os.fspath(faiss_path))
    dim, n = index.d, int(index.ntotal)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64) if n else np.empty(0, np.int64)
    flat = faiss.downcast_index(index.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim) if n else np.empty((0, dim), np.float32)
    _, last = np.unique(ids[::-1], return_index=True)  # an id stored twice: its newest vector
    rows = np.sort(n - 1 - last)
    directory.mkdir(parents=True, exist_ok=True)
    name = next_name(directory)
    write_segment(
        directory, name, dim, ids[rows], row_chunks(vectors, rows), np.empty(0, np.int64), (0, seq), "migrate"
    )
    write_list(directory, dim, [name])
    kill_point("migrate:list")
    log.info("moved %d vectors from %s into segment %s", len(rows), faiss_path.name, name)
