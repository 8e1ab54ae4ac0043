"""Neighbours of a set: the top-k of each image of a folder, or of indexed ids."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from encoder.decoding import decode_batches, default_workers
from encoder.image_files import find_images
from indexer import ImageRecord
from indexer.catalog import STATUS_OK, content_hash, in_chunks

from ..engine import Engine, NotFound
from .model import (
    QueryResult,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- neighbours of a set


def _exact_matches(engine: Engine, hashes: Iterable[str]) -> dict[str, int]:
    hashes = list(set(hashes))
    out: dict[str, int] = {}
    with engine.catalog.session() as s:
        for chunk in in_chunks(hashes):
            q = select(ImageRecord.content_hash, func.min(ImageRecord.id)).where(
                ImageRecord.status == STATUS_OK, ImageRecord.content_hash.in_(chunk)
            )
            out.update({h: i for h, i in s.execute(q.group_by(ImageRecord.content_hash))})
    return out


def neighbours_of_ids(engine: Engine, ids: Sequence[int], k: int = 10) -> list[QueryResult]:
    """The top-k of each indexed image in `ids` (itself excluded)."""
    out = []
    for image_id in ids:
        try:
            out.append(
                QueryResult(
                    {"id": int(image_id), "path": engine.get(int(image_id)).path}, engine.search_id(int(image_id), k=k)
                )
            )
        except NotFound as exc:
            out.append(QueryResult({"id": int(image_id)}, error=str(exc)))
    return out


def neighbours_of_folder(
    engine: Engine, folder: str | os.PathLike, k: int = 10, *, workers: int | None = None, batch_size: int = 256
) -> list[QueryResult]:
    """The top-k in the index of every image file under `folder` (set against set).

    A query file that is itself indexed is left out of its own results; a query file
    with the same bytes as an indexed one says so in `exact_match_id`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    paths = find_images(folder, skip_dirs=(str(engine.index_dir),))
    hashes = {}
    for p in paths:
        with contextlib.suppress(OSError):
            hashes[p] = content_hash(p)
    matches = _exact_matches(engine, hashes.values())
    enc = engine.snapshot().encoder
    workers = workers if workers is not None else (1 if len(paths) < 64 else default_workers())
    results: list[QueryResult] = []
    for batch in decode_batches(paths, enc.image_size, batch_size, workers=workers, max_pixels=engine.max_pixels):
        good = [d for d in batch if d.pixels is not None]
        vecs = enc.embed_pixels(np.stack([d.pixels for d in good])) if good else None
        row = 0
        for d in batch:
            p = paths[d.index]
            r = QueryResult({"path": str(p)}, exact_match_id=matches.get(hashes.get(p, "")))
            if d.pixels is None:
                r.error = d.error
            else:
                try:
                    own = engine.get_by_path(str(p.resolve())).id
                except NotFound:
                    own = None
                r.neighbours = engine.search_vector(vecs[row : row + 1], k=k, exclude_id=own)
                row += 1
            results.append(r)
    return results
