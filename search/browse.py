"""Browsing the collection: pages of indexed images, the folders that hold them, the files
that could not be read. Read-only queries over the engine's catalog; no web imports.

Folders are the '/'-separated directory parts of catalog paths (relative to the indexed
root); a folder filter is a plain prefix compare (``substr``), not ``LIKE``, so folder
names holding ``%`` or ``_`` select exactly themselves.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, func, select, true

from indexer.catalog import STATUS_FAILED, STATUS_OK, ImageRecord

from .engine import Engine

Sort = Literal["newest", "path"]
SORTS: tuple[str, ...] = ("newest", "path")


@dataclass(frozen=True)
class ImageRow:
    """One indexed image as a browse page lists it."""

    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    mtime: float  # seconds since the epoch: the file's modification time when it was indexed

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FailedRow:
    """A file the indexer could not read, and why."""

    id: int
    path: str
    size: int
    reason: str | None

    def as_dict(self) -> dict:
        return asdict(self)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, and how many items all its pages hold."""

    total: int
    items: list[T]


def folder_prefix(folder: str | None) -> str | None:
    """'a/b', '/a/b/' and 'a/b/' all mean the folder 'a/b/'; '' or '/' or None mean everything."""
    if folder is None:
        return None
    cleaned = folder.strip().strip("/")
    return f"{cleaned}/" if cleaned else None


def _under(prefix: str | None) -> ColumnElement[bool]:
    """The SQL condition 'path starts with prefix' (True when there is no prefix)."""
    if prefix is None:
        return true()
    return func.substr(ImageRecord.path, 1, len(prefix)) == prefix


def list_images(
    engine: Engine, *, offset: int = 0, limit: int = 60, folder: str | None = None, sort: Sort = "newest"
) -> Page[ImageRow]:
    """A page of indexed images under `folder`: newest file first (by modification time,
    then id), or in path order."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}: {', '.join(SORTS)}")
    prefix = folder_prefix(folder)
    where = (ImageRecord.status == STATUS_OK, _under(prefix))
    order = (
        (ImageRecord.mtime_ns.desc(), ImageRecord.id.desc()) if sort == "newest" else (ImageRecord.path, ImageRecord.id)
    )
    cols = (
        ImageRecord.id,
        ImageRecord.path,
        ImageRecord.size,
        ImageRecord.width,
        ImageRecord.height,
        ImageRecord.mtime_ns,
    )
    with engine.catalog.session() as s:
        total = int(s.scalar(select(func.count(ImageRecord.id)).where(*where)) or 0)
        rows = s.execute(select(*cols).where(*where).order_by(*order).offset(offset).limit(limit)).all()
    items = [ImageRow(i, p, size, w, h, mtime_ns / 1e9) for i, p, size, w, h, mtime_ns in rows]
    return Page(total, items)


def list_failed(engine: Engine, *, offset: int = 0, limit: int = 100) -> Page[FailedRow]:
    """A page of the files recorded as unreadable, in path order, with the indexer's reason."""
    where = ImageRecord.status == STATUS_FAILED
    cols = (ImageRecord.id, ImageRecord.path, ImageRecord.size, ImageRecord.error)
    with engine.catalog.session() as s:
        total = int(s.scalar(select(func.count(ImageRecord.id)).where(where)) or 0)
        rows = s.execute(select(*cols).where(where).order_by(ImageRecord.path).offset(offset).limit(limit)).all()
    return Page(total, [FailedRow(i, p, size, why) for i, p, size, why in rows])


# Folder counts need every path once; they are kept per engine and index generation, so a
# page that lists folders on each visit costs one pass per published index, not per request.
_folders_lock = threading.Lock()
_folders_cache: weakref.WeakKeyDictionary[Engine, tuple[int, list[tuple[str, int]]]] = weakref.WeakKeyDictionary()


def _count_folders(engine: Engine) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for _id, path, _w, _h in engine.catalog.indexed_rows():
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):  # an image counts in each folder above it
            counts["/".join(parts[:depth])] += 1
    return sorted(counts.items())


def folders(engine: Engine) -> list[tuple[str, int]]:
    """(folder, indexed images at any depth under it) for every folder that holds any, in path order."""
    gen = engine.snapshot().manifest.generation
    with _folders_lock:
        cached = _folders_cache.get(engine)
        if cached is None or cached[0] != gen:
            cached = (gen, _count_folders(engine))
            _folders_cache[engine] = cached
        return cached[1]
