"""Walk the folder and diff it against the catalog: what is unchanged, moved, a copy, gone, or to embed.

Unchanged files are recognised by (size, mtime) without reading them; what is
new or changed is hashed, so that a renamed file keeps its row and vector and a
byte-identical copy takes the vector of its first copy instead of being decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update

from encoder.image_files import iter_image_paths

from .catalog import hash_or_error, in_chunks, upsert_failed
from .run import IndexRun
from .schema import CATALOG_ROW_COLUMNS, STATUS_OK, STATUS_PENDING, CatalogRow, ImageRecord, utcnow


@dataclass
class Work:
    """What is left to do once the catalog agrees with the folder on everything else."""

    to_decode: list[str] = field(default_factory=list)  # relative paths to decode and embed, in this order
    copies: list[tuple[str, str]] = field(default_factory=list)  # (path, hash): take the vector of that content


def diff_folder(run: IndexRun) -> Work:
    """Walk the folder, then bring the catalog up to date with everything that needs no decoding:
    touched files, moves, unreadable files, deletions. Returns what must be embedded or copied."""
    _walk(run)
    to_hash, missing = _classify(run)
    with ThreadPoolExecutor(max_workers=8) as pool:  # I/O-bound; threads are enough
        hashes = pool.map(lambda rel: hash_or_error(run.seen[rel][0]), to_hash)
        run.hashes = dict(zip(to_hash, hashes, strict=True))
    run.now = utcnow()
    work = _match(run, to_hash, missing)
    work.to_decode += _retries(run, work.to_decode)
    return work


def _walk(run: IndexRun) -> None:
    """Fill run.rows (the catalog as found) and run.seen (the image files, in path order).

    Plain tuples and strings, not ORM objects and Paths: at 10,000 unchanged images those took
    two thirds of a no-change run, which is also what every run of `--watch` pays first."""
    with run.catalog.engine.connect() as c:
        run.rows = {r[1]: CatalogRow(*r) for r in c.execute(select(*CATALOG_ROW_COLUMNS))}
    seen = {}
    prefix = len(os.path.join(str(run.root), ""))
    for path, st in iter_image_paths(run.root, skip_dirs=(str(run.idx),)):
        rel = path[prefix:] if os.sep == "/" else path[prefix:].replace(os.sep, "/")
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            run.summary.failed.append((repr(rel), "file name is not valid UTF-8; rename it to index it"))
            continue
        seen[rel] = (path, st)
    run.seen = dict(sorted(seen.items()))  # path order: the first copy of a file is the alphabetically first


def _classify(run: IndexRun) -> tuple[list[str], dict[str, CatalogRow]]:
    """(files to hash: new or changed by size/mtime, rows whose file is missing); counts the unchanged."""
    to_hash: list[str] = []
    for rel, (_, st) in run.seen.items():
        row = run.rows.get(rel)
        if row is None:
            to_hash.append(rel)
        elif row.size == st.st_size and row.mtime_ns == st.st_mtime_ns and row.status != STATUS_PENDING:
            run.summary.unchanged += 1
        else:
            to_hash.append(rel)
    missing = {rel: row for rel, row in run.rows.items() if rel not in run.seen}
    return to_hash, missing


def _match(run: IndexRun, to_hash: list[str], missing: dict[str, CatalogRow]) -> Work:
    """Sort the hashed files into touched, moved, unreadable, copies and to-decode; delete the rows of
    what is gone (its vectors go with the next store save)."""
    summary, work = run.summary, Work()
    missing_by_hash: dict[str, CatalogRow] = {}
    for row in missing.values():
        if row.status == STATUS_OK and row.content_hash:
            missing_by_hash.setdefault(row.content_hash, row)
    # every indexed image's hash, for telling copies apart: read only when some file was hashed
    # (a third of a second at 100,000 images, on every run of a watch that found nothing new)
    present_ok = run.catalog.ok_id_by_hash() if to_hash else {}
    claimed: set[str] = set()
    with run.catalog.session() as s, s.begin():
        for rel in to_hash:
            path, st = run.seen[rel]
            digest, err = run.hashes[rel]
            row = run.rows.get(rel)
            if err is not None:
                upsert_failed(s, row, rel, st, err)
                summary.failed.append((rel, err))
                run.changed = True
                continue
            if row is not None and row.content_hash == digest and row.status == STATUS_OK:
                s.execute(
                    update(ImageRecord).where(ImageRecord.id == row.id).values(size=st.st_size, mtime_ns=st.st_mtime_ns)
                )
                summary.unchanged += 1  # touched, not changed
                continue
            if row is None and digest in missing_by_hash:
                moved = missing_by_hash.pop(digest)
                missing.pop(moved.path, None)
                s.execute(
                    update(ImageRecord)
                    .where(ImageRecord.id == moved.id)
                    .values(path=rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
                )
                summary.moved += 1
                run.changed = True
                continue
            if digest in present_ok and (row is None or row.id != present_ok[digest]):
                work.copies.append((rel, digest))
                continue
            if digest in claimed:  # a byte-identical copy of a file decoded in this run
                work.copies.append((rel, digest))
                continue
            claimed.add(digest)
            work.to_decode.append(rel)
        gone = [row.id for row in missing.values()]
        for chunk in in_chunks(gone):
            s.execute(delete(ImageRecord).where(ImageRecord.id.in_(chunk)))
        summary.removed = len(gone)
    if gone:
        run.store.remove(gone)
        run.changed = True
    return work


def _retries(run: IndexRun, to_decode: list[str]) -> list[str]:
    """Rows marked pending (by a crash, a model change) whose files are still here and not
    already to be decoded: they are embedded again."""
    with run.catalog.session() as s:
        pending = [
            r.path
            for r in s.scalars(select(ImageRecord).where(ImageRecord.status == STATUS_PENDING))
            if r.path in run.seen
        ]
    queued = set(to_decode)
    retried = [p for p in pending if p not in queued]
    run.summary.retried = len(retried)
    return retried
