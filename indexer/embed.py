"""Decode and embed what the walk found, committing each batch and checkpointing the store; then
give each byte-identical copy the vector of the file it copies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sqlalchemy import select

from encoder import Encoder
from encoder.decoding import Decoded, decode_batches, default_backend
from encoder.images import ImageInfo

from .catalog import STATUS_OK, STATUS_PENDING, ImageRecord, content_hash, upsert_failed
from .run import IndexRun


def embed_files(run: IndexRun, to_decode: list[str]) -> None:
    """Decode `to_decode` in parallel and embed it in batches, committing each batch; save the
    store after a full batch when the last save is more than ``checkpoint_every_s`` old."""
    opts = run.options
    bar = None
    if opts.progress and to_decode:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_decode), unit="img", desc="embedding", dynamic_ncols=True)
    n_workers = opts.workers if opts.workers is not None else default_decode_workers(run.encoder, len(to_decode))
    paths = [run.seen[rel][0] for rel in to_decode]
    batches = decode_batches(
        paths, run.encoder.image_size, opts.batch_size, workers=n_workers, max_pixels=opts.max_pixels
    )
    with cpu_thread_budget(run.encoder, n_workers):
        last_save = time.monotonic()
        for batch in batches:
            _embed_batch(run, batch, to_decode)
            run.changed = True
            if bar is not None:
                bar.update(len(batch))
            if len(batch) == opts.batch_size and time.monotonic() - last_save > opts.checkpoint_every_s:
                run.save_store()
                last_save = time.monotonic()
    if bar is not None:
        bar.close()


def default_decode_workers(encoder: Encoder, n_files: int) -> int:
    """Decoders for `n_files`. Threads (the default backend on small machines) start for free:
    one per core; torch then gets one thread and the embedding interleaves with decoding
    (measured best on 2 cores). Processes cost a start-up: none for a handful of files,
    else one per core, less the core that embeds when the model runs on the CPU."""
    cores = os.cpu_count() or 1
    if default_backend() == "thread":
        return min(cores, max(1, n_files))
    if n_files < 64:
        return 0
    return max(1, cores - 1) if encoder.device.type == "cpu" else cores


@contextmanager
def cpu_thread_budget(encoder: Encoder, decode_workers: int | None, backend: str | None = None) -> Iterator[None]:
    """On a CPU, give torch only the cores the decoders leave free.

    Torch's intra-op threads (OpenMP, which spin while they wait) and the
    decoders otherwise fight over the same cores; measured on 2 cores, this
    alone doubled end-to-end throughput. Decoding threads sleep in Pillow's C
    code rather than spin, so with them torch keeps half the cores (decoding
    and embedding cost about the same per image on a CPU).
    """
    import torch

    if encoder.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if decode_workers:
        if (backend or default_backend()) == "thread":
            torch.set_num_threads(max(1, cores // 2))
        else:
            torch.set_num_threads(max(1, cores - decode_workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _embed_batch(run: IndexRun, batch: list[Decoded], to_decode: list[str]) -> None:
    summary = run.summary
    good = [d for d in batch if d.pixels is not None]
    vectors = run.encoder.embed_pixels(np.stack([d.pixels for d in good])) if good else None
    rels = [to_decode[d.index] for d in batch]
    embedded_rows: list[ImageRecord] = []
    with run.catalog.session() as s, s.begin():
        # One SELECT and one flush per batch: a round-trip per image costs ~1 ms each.
        existing = {r.path: r for r in s.scalars(select(ImageRecord).where(ImageRecord.path.in_(rels)))}
        for d, rel in zip(batch, rels, strict=True):
            path, st = run.seen[rel]
            row = existing.get(rel)
            if d.pixels is None:
                upsert_failed(s, row, rel, st, d.error or "unknown error")
                summary.failed.append((rel, d.error or "unknown error"))
                continue
            digest = run.hashes.get(rel, (None, None))[0] or (row.content_hash if row else None)
            if row is None:
                row = ImageRecord(path=rel)
                summary.added += 1
            elif run.rows.get(rel) is not None and run.rows[rel].status != STATUS_PENDING:
                summary.updated += 1
            _set_indexed(run, row, st, digest or content_hash(path), d.info)
            row.duplicate_of = None
            s.add(row)
            embedded_rows.append(row)
        s.flush()
        ids = [row.id for row in embedded_rows]
    summary.embedded += len(good)
    if good:
        run.store.replace(np.array(ids, dtype=np.int64), vectors)  # a changed file replaces its old vector


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
