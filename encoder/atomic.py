"""Atomic file writes: the one way lookalike replaces a file a reader may be looking at.

Every write goes to a temporary file in the target's folder (named ``.NAME.*.tmp``), is
fsynced, given the usual permissions, renamed over the target, and the folder is fsynced so
the rename survives a power cut. A reader sees the old file or the new one, never half of one;
a crash leaves at most a ``.tmp`` file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

#: What temporary files are called, so a later run can recognise and remove leftovers.
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | os.PathLike) -> None:
    """mkstemp creates 0600 files; give finished files the usual permissions."""
    os.chmod(path, 0o666 & ~_umask())


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable. Best effort: some filesystems refuse."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    return tmp


def _commit(tmp: str, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    make_readable(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_via(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Atomically replace `path` with what `write(tmp_filename)` writes.

    For libraries that write to a file name themselves (safetensors, faiss, numpy)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        _commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through; renamed into place when the block ends, removed
    if it raises."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
        _commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
