"""Decode and embed what the walk found (on the run's distributor, indexer/distribute.py), committing
each result here and checkpointing the store; then give each byte-identical copy the vector of the
file it copies. Results a killed run's workers left in the spool (indexer/shard_file.py) are
adopted first, for every file still as they found it."""

from __future__ import annotations

import logging
import os
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from sqlalchemy import select

from encoder.images import ImageInfo

from .catalog import content_hash, upsert_failed
from .distribute import ShardResult, cpu_thread_budget, current_distributor, default_decode_workers, make_shards
from .layout import SHARDS
from .run import IndexRun
from .schema import STATUS_OK, STATUS_PENDING, ImageRecord
from .shard_file import ShardFile, ShardFileError, read_shard_file, spooled_names

# cpu_thread_budget and default_decode_workers live with the local threads now; build.py imports them here.
__all__ = ["add_copies", "adopt_spooled", "cpu_thread_budget", "default_decode_workers", "embed_files"]

log = logging.getLogger(__name__)


def embed_files(run: IndexRun, to_decode: list[str]) -> None:
    """Decode and embed `to_decode` with the run's distributor (indexer/distribute.py: this
    machine's threads unless another was chosen), in shards of the batch size, ingesting each
    result here, the single writer; save the store after a full shard when the last save is
    more than ``checkpoint_every_s`` old."""
    opts = run.options
    to_decode = adopt_spooled(run, to_decode)
    if not to_decode:
        return
    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_decode), unit="img", desc="embedding", dynamic_ncols=True)
    distributor = current_distributor(opts.workers)
    shards = make_shards([str(run.seen[rel][0]) for rel in to_decode], opts.batch_size)
    last_save = time.monotonic()
    with closing(distributor.embed(run.encoder, shards, opts.max_pixels, run.idx / SHARDS)) as results:
        for result in results:
            _ingest(run, result, to_decode)
            if result.spool_file:
                run.spooled.append(result.spool_file)
            run.changed = True
            if bar is not None:
                bar.update(len(result.indexes))
            if len(result.indexes) >= opts.batch_size and time.monotonic() - last_save > opts.checkpoint_every_s:
                run.save_store()
                last_save = time.monotonic()
    if bar is not None:
        bar.close()


def adopt_spooled(run: IndexRun, to_decode: list[str]) -> list[str]:
    """Ingest what shard files left in the spool (by a run killed before its store save) hold for
    files of `to_decode` that are as the worker found them: same model, same size and mtime, same
    content hash. Returns the files still to embed. Files in the spool that hold nothing usable
    (stale, another model's, damaged) are removed."""
    spool = run.idx / SHARDS
    names = spooled_names(spool)
    if not names:
        return to_decode
    position = {rel: i for i, rel in enumerate(to_decode)}
    adopted: set[int] = set()
    for name in names:
        try:
            shard = read_shard_file(spool, name)
        except FileNotFoundError:
            continue
        except ShardFileError as exc:
            log.warning("%s; removed", exc)
            (spool / name).unlink(missing_ok=True)
            continue
        result = _usable(run, shard, position, adopted)
        if result is None:
            (spool / name).unlink(missing_ok=True)
            continue
        _ingest(run, result, to_decode)
        adopted.update(result.indexes)
        run.spooled.append(name)  # removed by the next store save, which holds these vectors
        run.changed = True
    run.summary.adopted = len(adopted)
    if adopted:
        log.info("adopted %d vectors a killed run left in %s", len(adopted), spool)
    return [rel for i, rel in enumerate(to_decode) if i not in adopted]


def _usable(run: IndexRun, shard: ShardFile, position: dict[str, int], taken: set[int]) -> ShardResult | None:
    """The part of `shard` that can stand for embedding its files now, as a result over `position`'s
    list; None if no part can."""
    if shard.model_id != run.model_id:
        return None
    indexes, infos, hashes, rows = [], [], [], []
    mine: set[int] = set()  # positions this shard already covers (a path listed twice)
    vector_row = -1
    for f in shard.files:
        if f.error is not None:
            continue  # failures are tried again: the file may be readable now
        vector_row += 1
        try:
            rel = Path(f.path).relative_to(run.root).as_posix()
        except ValueError:
            continue
        i = position.get(rel)
        if i is None or i in taken or i in mine:
            continue
        st = run.seen[rel][1]
        known = run.hashes.get(rel, (None, None))[0] or (run.rows[rel].content_hash if rel in run.rows else None)
        if (f.size, f.mtime_ns) != (st.st_size, st.st_mtime_ns) or not known or f.content_hash != known:
            continue  # changed since the worker read it
        indexes.append(i)
        mine.add(i)
        infos.append(ImageInfo(f.width, f.height, f.format))
        hashes.append(f.content_hash)
        rows.append(vector_row)
    if not indexes:
        return None
    return ShardResult(
        indexes=indexes,
        errors=[None] * len(indexes),
        infos=infos,
        vectors=np.ascontiguousarray(shard.vectors[rows]),
        hashes=hashes,
        worker=shard.worker,
        spool_file=shard.name,
    )


def _ingest(run: IndexRun, result: ShardResult, to_decode: list[str]) -> None:
    """Commit one shard's catalog rows, then put its vectors into the store."""
    summary = run.summary
    rels = [to_decode[i] for i in result.indexes]
    embedded_rows: list[ImageRecord] = []
    with run.catalog.session() as s, s.begin():
        # One SELECT and one flush per batch: a round-trip per image costs ~1 ms each.
        existing = {r.path: r for r in s.scalars(select(ImageRecord).where(ImageRecord.path.in_(rels)))}
        hashes = result.hashes or [None] * len(rels)
        for rel, error, info, computed in zip(rels, result.errors, result.infos, hashes, strict=True):
            path, st = run.seen[rel]
            row = existing.get(rel)
            if error is not None:
                upsert_failed(s, row, rel, st, error)
                summary.failed.append((rel, error))
                continue
            digest = computed or run.hashes.get(rel, (None, None))[0] or (row.content_hash if row else None)
            if row is None:
                row = ImageRecord(path=rel)
                summary.added += 1
            elif run.rows.get(rel) is not None and run.rows[rel].status != STATUS_PENDING:
                summary.updated += 1
            _set_indexed(run, row, st, digest or content_hash(path), info)
            row.duplicate_of = None
            s.add(row)
            embedded_rows.append(row)
        s.flush()
        ids = [row.id for row in embedded_rows]
    summary.embedded += len(ids)
    if ids:
        run.store.replace(np.array(ids, dtype=np.int64), result.vectors)  # a changed file replaces its old vector


def add_copies(run: IndexRun, copies: list[tuple[str, str]]) -> None:
    """Index each (path, hash) of `copies` with the vector of an indexed file of that content."""
    if not copies:
        return
    firsts = run.catalog.ok_id_by_hash()
    # Why each content decoded this run could not be: a copy of a file that failed fails the same
    # way, and is recorded now (it used to wait for the next run, when it was decoded itself).
    failed = dict(run.summary.failed)
    why_failed = {run.hashes[p][0]: r for p, r in failed.items() if run.hashes.get(p, (None, None))[0]}
    new_ids, src_ids = [], []
    with run.catalog.session() as s, s.begin():
        for rel, digest in copies:
            src = firsts.get(digest)
            _, st = run.seen[rel]
            row = s.scalars(select(ImageRecord).where(ImageRecord.path == rel)).first()
            if src is None:  # its original could not be decoded: nor can this copy
                reason = why_failed.get(digest, "a byte-identical copy of a file that could not be indexed")
                upsert_failed(s, row, rel, st, reason)
                run.summary.failed.append((rel, reason))
                continue
            if row is None:
                row = ImageRecord(path=rel)
                run.summary.added += 1
            else:
                run.summary.updated += 1
            _set_indexed(run, row, st, digest, s.get(ImageRecord, src))
            s.add(row)
            s.flush()
            new_ids.append(row.id)
            src_ids.append(src)
    if new_ids:
        run.store.replace(np.array(new_ids, dtype=np.int64), run.store.get(src_ids))
    run.changed = True


def _set_indexed(
    run: IndexRun, row: ImageRecord, st: os.stat_result, digest: str, info: ImageInfo | ImageRecord
) -> None:
    """Mark `row` indexed by this run: its file's size, mtime and hash, `info`'s width, height and format."""
    row.size, row.mtime_ns, row.content_hash = st.st_size, st.st_mtime_ns, digest
    row.width, row.height, row.format = info.width, info.height, info.format
    row.status, row.error, row.embedded_at = STATUS_OK, None, run.now
    row.model_id, row.vector_seq = run.model_id, run.seq
