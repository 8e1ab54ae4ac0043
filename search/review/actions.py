"""The review operations that write: resolve (move aside), restore (undo), dismiss, recover.

Each runs under the index's writer lock (the one `lookalike index` takes, so files never move
under a running index, and two reviews never interleave), on a writable catalog, after
recovering whatever a killed operation left (:mod:`.moves`). Files are only ever moved,
never deleted; the catalog's review tables (:mod:`indexer.decisions`) record the outcome.
The images' own rows are left to the indexer: the next `lookalike index` drops the rows of
files that went aside and adds back the ones restored.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, update

from indexer import Catalog
from indexer.catalog import utcnow
from indexer.decisions import QuarantinedFile, ensure_tables, has_tables
from indexer.layout import QUARANTINE

from ..engine import Engine, NotFound
from . import moves
from .decisions import record_dismissal
from .errors import Conflict, ReviewError
from .plan import Move, check_file, indexed_rows

log = logging.getLogger(__name__)

# flock excludes other processes; threads of one process (a server's) each get their own
# open file and would exclude each other too, but with an error instead of a wait.
_in_process = threading.Lock()


@dataclass
class QuarantineEntry:
    path: str  # where the file was, relative to the indexed root
    quarantine_path: str  # where it is now, relative to the index directory
    content_hash: str
    keeper_path: str
    tier: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Batch:
    """Files moved aside together, and whether they have been put back."""

    batch: str
    moved_at: datetime
    restored_at: datetime | None = None
    files: list[QuarantineEntry] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "moved_at": self.moved_at.isoformat(),
            "restored_at": self.restored_at.isoformat() if self.restored_at else None,
            "files": [f.as_dict() for f in self.files],
        }


def _root(catalog: Catalog, index_dir: Path) -> Path:
    root = catalog.get_meta("root")
    return Path(root) if root else index_dir.parent


@contextmanager
def writing(
    index_dir: str | os.PathLike, catalog_url: str | None = None, recovered: list[str] | None = None
) -> Iterator[Catalog]:
    """A writable catalog with the review tables, under the index's writer lock, after
    recovery (one line per recovered batch is appended to `recovered`)."""
    from indexer.build import index_lock  # faiss and torch: only once something is written
    from indexer.index_model import IndexBuildError

    idx = Path(index_dir).resolve()
    with _in_process, ExitStack() as stack:
        try:
            stack.enter_context(index_lock(idx))
        except IndexBuildError:
            raise Conflict(f"{idx}: `lookalike index` or another review is writing this index; try again") from None
        catalog = Catalog.for_directory(idx, catalog_url)
        stack.callback(catalog.close)
        ensure_tables(catalog)
        for journal in moves.pending_journals(idx):
            line = moves.recover_journal(idx, _root(catalog, idx), journal, _committed(catalog))
            log.warning("recovered an interrupted review operation: %s", line)
            if recovered is not None:
                recovered.append(line)
        yield catalog


def _committed(catalog: Catalog) -> Callable[[str, str], bool]:
    """Whether the catalog recorded a batch's outcome: its files (resolve), all restored (restore)."""

    def committed(kind: str, batch: str) -> bool:
        with catalog.session() as s:
            rows = s.execute(select(QuarantinedFile.restored_at).where(QuarantinedFile.batch == batch)).all()
        if kind == moves.RESOLVE:
            return bool(rows)
        return bool(rows) and all(r[0] is not None for r in rows)

    return committed


def recover(index_dir: str | os.PathLike, catalog_url: str | None = None) -> list[str]:
    """Finish or undo what a killed review operation left; returns one line per batch.
    Cheap when there is nothing to do: no lock, no catalog, one directory listing."""
    recovered: list[str] = []
    if moves.pending_journals(Path(index_dir).resolve()):
        with writing(index_dir, catalog_url, recovered):
            pass
    return recovered


# ---------------------------------------------------------------- resolve


def resolve(engine: Engine, planned: Sequence[Move]) -> Batch:
    """Move the files of `planned` into a new quarantine batch and record them. Every file
    (and its keeper) is checked again under the lock first (size and mtime: the content was
    compared when planned), and the rows must be those planned from: all move, or none."""
    if not planned:
        raise ReviewError("nothing to move")
    paths = [m.path for m in planned]
    if len(set(paths)) != len(paths):
        raise ReviewError("a file is planned to move twice")
    with writing(engine.index_dir, engine.catalog.url) as catalog:
        rows = indexed_rows(engine, {i for m in planned for i in (m.id, m.keeper_id)})
        for rec in rows.values():
            check_file(engine.root, rec, read_content=False)
        for m in planned:
            if rows[m.id].content_hash != m.content_hash or rows[m.keeper_id].path != m.keeper_path:
                raise ReviewError(f"{m.path} was re-indexed since the plan was made; plan it again")
        if {m.keeper_id for m in planned} & {m.id for m in planned}:
            raise ReviewError("a keeper cannot also be moved")
        batch = moves.new_batch_id()
        journal = moves.begin(engine.index_dir, batch, moves.RESOLVE, paths)
        try:
            moves.run_moves(engine.index_dir, engine.root, batch, moves.RESOLVE, paths)
        except OSError as exc:
            log.warning("resolve %s failed (%s); putting the files back", batch, exc)
            moves.recover_journal(engine.index_dir, engine.root, journal, lambda _k, _b: False)
            raise ReviewError(f"could not move the files aside ({exc}); nothing was moved") from None
        now = utcnow()
        records = [
            QuarantinedFile(
                batch=batch,
                path=m.path,
                content_hash=m.content_hash,
                size=m.size,
                mtime_ns=m.mtime_ns,
                keeper_path=m.keeper_path,
                keeper_hash=m.keeper_hash,
                tier=m.tier,
                moved_at=now,
            )
            for m in planned
        ]
        with catalog.session() as s, s.begin():  # the commit point (see moves.py)
            s.add_all(records)
        moves.finish(journal)
    log.info("moved %d file(s) into %s", len(paths), moves.quarantine_root(engine.index_dir) / batch)
    return _batch(batch, records)


def _batch(batch: str, records: Sequence[QuarantinedFile]) -> Batch:
    entries = [
        QuarantineEntry(r.path, f"{QUARANTINE}/{batch}/{r.path}", r.content_hash, r.keeper_path, r.tier)
        for r in sorted(records, key=lambda r: r.path)
    ]
    return Batch(batch, records[0].moved_at, records[0].restored_at, entries)


# ---------------------------------------------------------------- restore


def batches(catalog: Catalog, *, include_restored: bool = False) -> list[Batch]:
    """The quarantine batches, newest first."""
    if not has_tables(catalog):
        return []
    with catalog.session() as s:
        q = select(QuarantinedFile).order_by(QuarantinedFile.batch, QuarantinedFile.path)
        if not include_restored:
            q = q.where(QuarantinedFile.restored_at.is_(None))
        rows = list(s.scalars(q))
    by_batch: dict[str, list[QuarantinedFile]] = {}
    for r in rows:
        by_batch.setdefault(r.batch, []).append(r)
    return [_batch(b, rs) for b, rs in sorted(by_batch.items(), reverse=True)]


def restore(
    index_dir: str | os.PathLike, batch: str | None = None, *, catalog_url: str | None = None, every: bool = False
) -> list[Batch]:
    """Put the files of `batch` (None: the newest batch; `every`: all batches) back where
    they were. Refuses, moving nothing, if any of those paths is taken again."""
    if batch is not None and not moves.is_batch_id(batch):
        raise ReviewError(f"{batch!r} is not a quarantine batch name (like 20240601T120000Z-3f9a1c)")
    idx = Path(index_dir).resolve()
    with writing(idx, catalog_url) as catalog:
        active = batches(catalog)
        if batch is not None:
            chosen = [b for b in active if b.batch == batch]
            if not chosen:
                raise NotFound(f"no quarantined batch {batch} (restored already, or never made)")
        else:
            chosen = active if every else active[:1]
            if not chosen:
                raise NotFound("nothing is in the quarantine")
        root = _root(catalog, idx)
        done = [_restore_one(idx, root, catalog, b) for b in chosen]
    return done


def _restore_one(idx: Path, root: Path, catalog: Catalog, batch: Batch) -> Batch:
    paths = [f.path for f in batch.files]
    taken = [p for p in paths if os.path.lexists(root / moves.safe_relative(p))]
    if taken:
        raise Conflict(
            f"cannot restore {batch.batch}: {len(taken)} original path(s) are taken again "
            f"({', '.join(taken[:3])}{'...' if len(taken) > 3 else ''}); move those files away first"
        )
    missing = [p for p in paths if not os.path.lexists(moves.quarantined_path(idx, batch.batch, p))]
    if missing:
        raise ReviewError(f"cannot restore {batch.batch}: {', '.join(missing[:3])} no longer in the quarantine")
    journal = moves.begin(idx, batch.batch, moves.RESTORE, paths)
    try:
        moves.run_moves(idx, root, batch.batch, moves.RESTORE, paths)
    except OSError as exc:
        moves.recover_journal(idx, root, journal, lambda _k, _b: False)
        raise ReviewError(f"could not restore {batch.batch} ({exc}); nothing was moved") from None
    now = utcnow()
    with catalog.session() as s, s.begin():  # the commit point
        s.execute(update(QuarantinedFile).where(QuarantinedFile.batch == batch.batch).values(restored_at=now))
    moves.finish(journal)
    moves.prune_empty(moves.quarantine_root(idx) / batch.batch)
    batch.restored_at = now
    log.info("restored %d file(s) from %s", len(paths), batch.batch)
    return batch


# ---------------------------------------------------------------- dismiss


def dismiss(engine: Engine, keeper_id: int, member_ids: Sequence[int], tier: str) -> int:
    """Record that the images of a group are not duplicates of each other (by content, so
    the decision outlives re-indexing). Returns the number of new pairs recorded."""
    ids = list(dict.fromkeys([int(keeper_id), *(int(i) for i in member_ids)]))
    if len(ids) < 2:
        raise ReviewError("a dismissal needs the keeper and at least one other image")
    rows = indexed_rows(engine, ids)
    digests = [rows[i].content_hash for i in ids]
    if any(d is None for d in digests):
        raise ReviewError("an image has no content hash; run `lookalike index` first")
    with writing(engine.index_dir, engine.catalog.url) as catalog:
        return record_dismissal(catalog, [d for d in digests if d], tier)
