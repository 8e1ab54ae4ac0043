"""Moving files into and out of the quarantine so that a kill at any moment loses nothing.

A batch of moves is one journal, ``QUARANTINE/<batch>.journal``, written atomically (and
fsynced) *before* the first file moves: the kind (``resolve``: folder -> quarantine,
``restore``: back) and every relative path. Then the files move, the folders they left
and entered are fsynced, and the catalog records the outcome in one transaction: that
commit is the batch's commit point. Last the journal is removed.

A journal left behind means a process died mid-batch. :func:`recover_journal` reads the
state of each file from the disk (where it is now; not from the journal) and, unless the
catalog committed the batch, puts every file back where it was before the batch began.
A committed batch had finished its moves before it committed, so only the journal is
left to remove. Recovery runs before every review operation and when a server that may
write starts, so the next one to look finds a consistent state.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from encoder.atomic import TMP_SUFFIX, atomic_write_json, fsync_dir
from indexer.layout import QUARANTINE

from .errors import OutsideFolder, ReviewError

log = logging.getLogger(__name__)

RESOLVE = "resolve"  # files move from the folder into the quarantine
RESTORE = "restore"  # and back
JOURNAL_SUFFIX = ".journal"


def new_batch_id() -> str:
    """A batch name that sorts by time and is safe as a folder name: 20240601T120000Z-3f9a1c."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def is_batch_id(name: str) -> bool:
    """Whether `name` looks like a batch this module made (so a request's string can name a folder)."""
    stamp, _, tail = name.partition("-")
    return len(stamp) == 16 and stamp[8] == "T" and stamp.endswith("Z") and len(tail) == 6 and tail.isalnum()


def safe_relative(rel: str) -> PurePosixPath:
    """A catalog path as a relative path that stays below its base, or OutsideFolder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("..", ".", "") for part in p.parts):
        raise OutsideFolder(f"{rel!r} is not a plain path inside the indexed folder")
    return p


def quarantine_root(index_dir: Path) -> Path:
    return index_dir / QUARANTINE


def quarantined_path(index_dir: Path, batch: str, rel: str) -> Path:
    """Where a file of `batch` whose original path was `rel` lies in the quarantine."""
    return quarantine_root(index_dir) / batch / safe_relative(rel)


# ---------------------------------------------------------------- one file


def move_file(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, never overwriting: a rename on the same filesystem; across
    filesystems, a copy (data and mode, mtime kept) fsynced and renamed into place before
    `src` is unlinked, so at every moment at least one complete copy exists."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "refusing to overwrite", str(dst))
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(dst.parent)  # the copy must be durable before the original goes
    os.unlink(src)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _leftover_temps(dst: Path) -> list[Path]:
    """Temporary copies a cross-filesystem move of `dst` may have left when killed."""
    return list(dst.parent.glob(f".{dst.name}.*{TMP_SUFFIX}")) if dst.parent.is_dir() else []


# ---------------------------------------------------------------- a batch


def journal_path(index_dir: Path, batch: str) -> Path:
    return quarantine_root(index_dir) / f"{batch}{JOURNAL_SUFFIX}"


def _ends(index_dir: Path, root: Path, batch: str, kind: str, rel: str) -> tuple[Path, Path]:
    """(where the file starts, where it goes) for one path of a batch of `kind`."""
    home, aside = root / safe_relative(rel), quarantined_path(index_dir, batch, rel)
    return (home, aside) if kind == RESOLVE else (aside, home)


def begin(index_dir: Path, batch: str, kind: str, paths: list[str]) -> Path:
    """Write the batch's journal (atomically, fsynced) before anything moves."""
    path = journal_path(index_dir, batch)
    atomic_write_json(path, {"kind": kind, "batch": batch, "paths": paths})
    return path


def run_moves(index_dir: Path, root: Path, batch: str, kind: str, paths: Iterable[str]) -> None:
    """Move every path of the batch, then fsync the folders touched (once each, not per file:
    until the catalog commits, recovery reads the truth from the disk either way)."""
    touched: set[Path] = set()
    for rel in paths:
        src, dst = _ends(index_dir, root, batch, kind, rel)
        move_file(src, dst)
        touched |= {src.parent, dst.parent}
    for folder in sorted(touched):
        fsync_dir(folder)


def finish(journal: Path) -> None:
    """The batch is committed: drop its journal."""
    journal.unlink(missing_ok=True)
    fsync_dir(journal.parent)


def prune_empty(folder: Path) -> None:
    """Remove empty folders under `folder` (and it, if left empty): what a restore leaves."""
    if not folder.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):  # not empty: keep it
            os.rmdir(dirpath)


def recover_journal(index_dir: Path, root: Path, journal: Path, committed: Callable[[str, str], bool]) -> str:
    """Finish what a dead process left at `journal`; returns what was done, for a log line.

    `committed(kind, batch)` asks the catalog whether the batch's outcome was recorded."""
    try:
        entry = json.loads(journal.read_text())
        kind, batch, paths = entry["kind"], entry["batch"], list(entry["paths"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReviewError(f"{journal}: unreadable journal of an interrupted batch ({exc}); check it by hand") from None
    if committed(kind, batch):
        finish(journal)
        if kind == RESTORE:
            prune_empty(quarantine_root(index_dir) / batch)
        return f"{kind} {batch}: had committed; journal removed"
    back = 0
    for rel in paths:
        start, end = _ends(index_dir, root, batch, kind, rel)
        for tmp in _leftover_temps(end):
            tmp.unlink()
        if os.path.lexists(end) and os.path.lexists(start):
            # A cross-filesystem copy finished but the original was not unlinked yet: the
            # original stays. Different bytes would mean someone wrote at the start meanwhile;
            # then keep both and say so.
            if _same_bytes(start, end):
                end.unlink()
            else:
                log.warning("%s and %s both exist and differ; both kept", start, end)
        elif os.path.lexists(end):
            move_file(end, start)
            back += 1
    for folder in {start.parent for rel in paths for start in _ends(index_dir, root, batch, kind, rel)}:
        fsync_dir(folder)
    finish(journal)
    if kind == RESOLVE:
        prune_empty(quarantine_root(index_dir) / batch)
    return f"{kind} {batch}: interrupted before it committed; {back} file(s) put back where they were"


def pending_journals(index_dir: Path) -> list[Path]:
    q = quarantine_root(index_dir)
    return sorted(q.glob(f"*{JOURNAL_SUFFIX}")) if q.is_dir() else []
