"""What the catalog says of a report's images: their rows, the distinct (canonical) ids, keeper order."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from sqlalchemy import select

from indexer import ImageRecord
from indexer.catalog import STATUS_OK, in_chunks

from ..engine import Engine
from .model import (
    Member,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- catalog helpers


def members(engine: Engine, ids: Iterable[int]) -> dict[int, Member]:
    return member_rows(engine, ids)[0]


def member_rows(engine: Engine, ids: Iterable[int]) -> tuple[dict[int, Member], dict[int, str | None]]:
    """(each image's row as a group member, each image's file format as its decoder found it, not
    its name's suffix), in one pass over the catalog."""
    ids = [int(i) for i in ids]
    out: dict[int, Member] = {}
    fmt: dict[int, str | None] = {}
    cols = (ImageRecord.id, ImageRecord.path, ImageRecord.width, ImageRecord.height, ImageRecord.size)
    with engine.catalog.session() as s:
        for chunk in in_chunks(ids):
            for i, p, w, h, sz, f in s.execute(select(*cols, ImageRecord.format).where(ImageRecord.id.in_(chunk))):
                out[i] = Member(i, p, w, h, sz)
                fmt[i] = f
    return out, fmt


def canonical_ids(engine: Engine) -> np.ndarray:
    """Ids of indexed images that are not byte-identical copies of another, sorted."""
    with engine.catalog.session() as s:
        q = select(ImageRecord.id).where(ImageRecord.status == STATUS_OK, ImageRecord.duplicate_of.is_(None))
        return np.fromiter(s.scalars(q), dtype=np.int64)


def keeper_order(m: Member) -> tuple:
    return (-(m.width or 0) * (m.height or 0), -(m.size or 0), m.id)
