"""`build_index`: bring an index directory up to date with a folder of images.

Read top to bottom: lock -> model (given, kept, or trained) -> catalog + store
-> reconcile after any crash -> walk and classify (unchanged by size+mtime,
changed, new, missing) -> hash what is new or changed -> moves and exact
duplicates by content hash -> decode in parallel (threads) and embed in
batches, committing each batch -> remove what is gone -> publish.

Crash safety: a catalog row is committed *before* its vector reaches the
store file, and carries the sequence number of the store save that will hold
it. On the next run, rows newer than the last completed save, or whose id is
missing from the store, are embedded again; vectors without a row are
dropped. Catalog ids are never reused, so a stale vector cannot be paired
with a different file.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select, text, update

from encoder import Encoder, ModelConfig, TrainConfig
from encoder.decoding import decode_many, default_backend
from encoder.images import DEFAULT_MAX_PIXELS, iter_image_files

from .catalog import STATUS_FAILED, STATUS_OK, STATUS_PENDING, Catalog, ImageRecord, utcnow
from .hit_rows import HIT_ROWS, read_hit_rows
from .index_model import IndexBuildError, prepare_model
from .layout import default_index_dir
from .neighbours import NEIGHBOURS, NEIGHBOURS_K, read_neighbours
from .vectors import STORE, Manifest, VectorStore, plan_index, publish, republish_derived

log = logging.getLogger(__name__)

LOCK = "lock"
SAVE_EVERY_S = 20.0  # default: save the store at least this often during a long run


@dataclass
class IndexSummary:
    root: str
    index_dir: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    retried: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0
    total: int = 0
    duration_s: float = 0.0
    images_per_second: float = 0.0
    index_type: str = ""
    index_reason: str = ""
    neighbours: str = ""  # what this run did to the precomputed neighbour table ("" if nothing)
    trained: bool = False
    train_s: float = 0.0  # part of duration_s spent training a model first (images_per_second excludes it)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return d


@contextmanager
def index_lock(index_dir: Path) -> Iterator[None]:
    """One writer at a time. flock is released by the OS if the process dies."""
    fh = open(index_dir / LOCK, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBuildError(f"{index_dir}: another `lookalike index` is running on this index") from None
        yield
    finally:
        fh.close()


def bytes_hash(data: bytes) -> str:
    """The catalog's content hash of in-memory bytes (same as :func:`content_hash` of a file)."""
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def content_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_or_error(path: Path) -> tuple[str | None, str | None]:
    try:
        return content_hash(path), None
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"


def build_index(
    folder: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    *,
    index_type: str = "auto",
    reembed: bool = False,
    catalog_url: str | None = None,
    workers: int | None = None,
    batch_size: int = 256,
    checkpoint_every_s: float = SAVE_EVERY_S,
    device: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    progress: bool = True,
    neighbours: int = NEIGHBOURS_K,
) -> IndexSummary:
    """Index (or update the index of) every image under `folder`. Returns what changed.

    `neighbours`: how many nearest neighbours of each image to precompute for by-id
    queries (indexer/neighbours.py); 0 for none.
    """
    if neighbours < 0:
        raise IndexBuildError("neighbours must be >= 0")
    t0 = time.perf_counter()
    root = Path(folder).resolve()
    if not root.is_dir():
        raise IndexBuildError(f"{folder}: not a folder")
    idx = Path(index_dir).resolve() if index_dir else default_index_dir(root)
    idx.mkdir(parents=True, exist_ok=True)
    summary = IndexSummary(root=str(root), index_dir=str(idx))
    with index_lock(idx):
        choice = prepare_model(root, idx, model_dir, reembed, model_config, train_config, device)
        encoder, reembed = choice.encoder, choice.reembed
        summary.trained, summary.train_s = choice.trained_s is not None, choice.trained_s or 0.0
        encoder.max_pixels = max_pixels
        catalog = Catalog.for_directory(idx, catalog_url)
        try:
            _run(
                root,
                idx,
                catalog,
                encoder,
                summary,
                index_type,
                reembed,
                workers,
                batch_size,
                max_pixels,
                progress,
                checkpoint_every_s,
                neighbours,
            )
        finally:
            catalog.close()
    summary.duration_s = round(time.perf_counter() - t0, 3)
    indexing_s = summary.duration_s - summary.train_s
    summary.images_per_second = round(summary.embedded / indexing_s, 1) if indexing_s > 0 else 0.0
    return summary


def _run(
    root: Path,
    idx: Path,
    catalog: Catalog,
    encoder: Encoder,
    summary: IndexSummary,
    index_type: str,
    reembed: bool,
    workers: int | None,
    batch_size: int,
    max_pixels: int,
    progress: bool,
    checkpoint_every_s: float,
    neighbours: int,
) -> None:
    mid = encoder.model_id
    catalog.ensure_model(mid, encoder.config.kind, encoder.config.to_dict())
    if catalog.get_meta("root") != str(root):
        catalog.set_meta("root", str(root))  # where the files are: the server serves only these
    manifest = Manifest.read(idx)
    store = _open_store(idx, encoder.dim, reembed)
    changed = _reconcile(catalog, store, mid, reembed)

    # ---- walk and classify
    with catalog.session() as s:
        rows = {r.path: r for r in s.scalars(select(ImageRecord).execution_options(yield_per=10_000))}
    seen: dict[str, tuple[Path, os.stat_result]] = {}
    for path, st in iter_image_files(root, skip_dirs=(str(idx),)):
        rel = path.relative_to(root).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            summary.failed.append((repr(rel), "file name is not valid UTF-8; rename it to index it"))
            continue
        seen[rel] = (path, st)

    seen = dict(sorted(seen.items()))  # path order: the first copy of a file is the alphabetically first
    to_hash: list[str] = []
    for rel, (_, st) in seen.items():
        row = rows.get(rel)
        if row is None:
            to_hash.append(rel)
        elif row.size == st.st_size and row.mtime_ns == st.st_mtime_ns and row.status != STATUS_PENDING:
            summary.unchanged += 1
        else:
            to_hash.append(rel)
    missing = {rel: row for rel, row in rows.items() if rel not in seen}

    # ---- hash what is new or changed (I/O-bound; threads are enough)
    with ThreadPoolExecutor(max_workers=8) as pool:
        hashes = dict(zip(to_hash, pool.map(lambda r: _hash_or_error(seen[r][0]), to_hash), strict=True))

    # ---- moves, exact duplicates, and what must be decoded
    missing_by_hash: dict[str, ImageRecord] = {}
    for row in missing.values():
        if row.status == STATUS_OK and row.content_hash:
            missing_by_hash.setdefault(row.content_hash, row)
    with catalog.session() as s:
        present_ok = {
            h: i
            for h, i in s.execute(
                select(ImageRecord.content_hash, ImageRecord.id).where(ImageRecord.status == STATUS_OK)
            )
            if h
        }
    to_decode: list[str] = []
    copies: list[tuple[str, str]] = []  # (rel, hash) to be copied from the first file with that hash
    claimed: set[str] = set()
    now = utcnow()
    with catalog.session() as s, s.begin():
        for rel in to_hash:
            path, st = seen[rel]
            digest, err = hashes[rel]
            row = rows.get(rel)
            if err is not None:
                _upsert_failed(s, row, rel, st, err)
                summary.failed.append((rel, err))
                changed = True
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
                changed = True
                continue
            if digest in present_ok and (row is None or row.id != present_ok[digest]):
                copies.append((rel, digest))
                continue
            if digest in claimed:  # a byte-identical copy of a file decoded in this run
                copies.append((rel, digest))
                continue
            claimed.add(digest)
            to_decode.append(rel)
        # ---- remove what is gone (rows now; vectors with the next store save)
        gone = [row.id for row in missing.values()]
        for start in range(0, len(gone), 500):
            s.execute(delete(ImageRecord).where(ImageRecord.id.in_(gone[start : start + 500])))
        summary.removed = len(gone)
    if gone:
        store.remove(gone)
        changed = True
    # Rows marked pending by reconciliation (crash, model change) are embedded again too.
    with catalog.session() as s:
        pending = [
            r.path for r in s.scalars(select(ImageRecord).where(ImageRecord.status == STATUS_PENDING)) if r.path in seen
        ]
    pending_set = set(to_decode)
    retried = [p for p in pending if p not in pending_set]
    summary.retried = len(retried)
    to_decode += retried

    # ---- decode, embed, commit in batches
    seq = int(catalog.get_meta("store_seq") or 0) + 1
    bar = None
    if progress and to_decode:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_decode), unit="img", desc="embedding", dynamic_ncols=True)
    n_workers = workers if workers is not None else default_decode_workers(encoder, len(to_decode))
    decoded = decode_many([seen[r][0] for r in to_decode], encoder.image_size, workers=n_workers, max_pixels=max_pixels)
    run = _RunState(catalog, store, encoder, summary, seen, rows, hashes, now)
    with cpu_thread_budget(encoder, n_workers):
        changed |= _decode_and_embed(run, decoded, to_decode, idx, seq, bar, batch_size, checkpoint_every_s)
        seq = int(catalog.get_meta("store_seq") or 0) + 1
    if bar is not None:
        bar.close()

    # ---- exact duplicates take the vector of their first copy
    if copies:
        _add_copies(run, copies, seq)
        changed = True
    _refresh_duplicate_links(catalog)
    summary.duplicates = _count_duplicates(catalog)

    summary.total = catalog.count(STATUS_OK)
    plan = plan_index(len(store), store.dim, index_type)
    needs_publish = (
        changed
        or manifest is None
        or manifest.count != len(store)
        or manifest.model_id != mid
        or (index_type != "auto" and manifest.index_type != plan.index_type)
    )
    derived_stale = manifest is not None and (
        manifest.neighbours_k != neighbours
        or (neighbours > 0 and read_neighbours(idx / NEIGHBOURS, neighbours) is None)  # deleted or damaged
        or read_hit_rows(idx / HIT_ROWS) is None  # deleted, damaged or from an older version
    )
    if needs_publish:
        seq = _save_store(idx, store, catalog, seq)
        manifest = publish(idx, store, plan, mid, manifest, neighbours_k=neighbours, catalog=catalog, progress=progress)
        summary.neighbours = manifest.neighbours
    elif derived_stale:
        manifest = republish_derived(idx, store, manifest, neighbours_k=neighbours, catalog=catalog, progress=progress)
        summary.neighbours = manifest.neighbours
    summary.index_type = manifest.index_type
    summary.index_reason = manifest.reason


def _decode_and_embed(run: _RunState, decoded, to_decode, idx: Path, seq: int, bar, batch_size: int,
                      checkpoint_every_s: float) -> bool:  # fmt: skip
    """Embed decoded images in batches, committing each; save the store every so often."""
    last_save = time.monotonic()
    changed = False
    batch: list = []
    for d in decoded:
        batch.append(d)
        if len(batch) >= batch_size:
            _embed_batch(run, batch, to_decode, seq)
            changed = True
            if bar is not None:
                bar.update(len(batch))
            batch = []
            if time.monotonic() - last_save > checkpoint_every_s:
                seq = _save_store(idx, run.store, run.catalog, seq)
                last_save = time.monotonic()
    if batch:
        _embed_batch(run, batch, to_decode, seq)
        changed = True
        if bar is not None:
            bar.update(len(batch))
    return changed


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


def _open_store(idx: Path, dim: int, reembed: bool) -> VectorStore:
    path = idx / STORE
    if not path.exists():
        return VectorStore(dim)
    store = VectorStore.load(path)
    if store.dim != dim:
        if not reembed:
            raise IndexBuildError(
                f"{idx}: stored vectors have {store.dim} dimensions, the model makes {dim}; pass --reembed"
            )
        return VectorStore(dim)
    return store


def _reconcile(catalog: Catalog, store: VectorStore, mid: str, reembed: bool) -> bool:
    """Make catalog and store agree after a crash (or a model change). Returns True if anything moved."""
    saved_seq = int(catalog.get_meta("store_seq") or 0)
    stored = set(store.ids().tolist())
    changed = False
    with catalog.session() as s, s.begin():
        if not reembed:
            other = s.scalar(
                select(ImageRecord.model_id)
                .where(ImageRecord.status == STATUS_OK, ImageRecord.model_id != mid)
                .limit(1)
            )
            if other:
                raise IndexBuildError(
                    f"the index holds vectors made by model {other}, but its model is now {mid}; "
                    "pass --reembed to re-embed every image with it"
                )
        ok_rows = s.execute(select(ImageRecord.id, ImageRecord.vector_seq).where(ImageRecord.status == STATUS_OK)).all()
        suspect = [i for i, vseq in ok_rows if reembed or vseq > saved_seq or i not in stored]
        for start in range(0, len(suspect), 500):
            s.execute(
                update(ImageRecord)
                .where(ImageRecord.id.in_(suspect[start : start + 500]))
                .values(status=STATUS_PENDING)
            )
        keep = {i for i, _ in ok_rows} - set(suspect)
    orphans = [i for i in stored if i not in keep]
    if orphans:
        store.remove(orphans)
    if suspect or orphans:
        log.info("reconciled: %d rows to re-embed, %d vectors without a row dropped", len(suspect), len(orphans))
        changed = True
    return changed


def _upsert_failed(s, row: ImageRecord | None, rel: str, st: os.stat_result, reason: str, info=None) -> None:
    values = dict(
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        status=STATUS_FAILED,
        error=reason,
        width=info.width if info else None,
        height=info.height if info else None,
        format=info.format if info else None,
    )
    if row is None:
        s.add(ImageRecord(path=rel, content_hash=None, **values))
    else:
        s.execute(update(ImageRecord).where(ImageRecord.id == row.id).values(**values))


@dataclass
class _RunState:
    """What one run knows about the folder, shared by the batch steps."""

    catalog: Catalog
    store: VectorStore
    encoder: Encoder
    summary: IndexSummary
    seen: dict[str, tuple[Path, os.stat_result]]
    rows: dict[str, ImageRecord]
    hashes: dict[str, tuple[str | None, str | None]]
    now: object

    @property
    def model_id(self) -> str:
        return self.encoder.model_id


def _embed_batch(run: _RunState, batch, to_decode: list[str], seq: int) -> None:
    catalog, store, summary, seen, rows, mid, now = (
        run.catalog,
        run.store,
        run.summary,
        run.seen,
        run.rows,
        run.model_id,
        run.now,
    )
    good = [d for d in batch if d.pixels is not None]
    vectors = run.encoder.embed_pixels(np.stack([d.pixels for d in good])) if good else None
    rels = [to_decode[d.index] for d in batch]
    embedded_rows: list[ImageRecord] = []
    with catalog.session() as s, s.begin():
        # One SELECT and one flush per batch: a round-trip per image costs ~1 ms each.
        existing = {r.path: r for r in s.scalars(select(ImageRecord).where(ImageRecord.path.in_(rels)))}
        for d, rel in zip(batch, rels, strict=True):
            _, st = seen[rel]
            row = existing.get(rel)
            if d.pixels is None:
                _upsert_failed(s, row, rel, st, d.error or "unknown error")
                summary.failed.append((rel, d.error or "unknown error"))
                continue
            digest = run.hashes.get(rel, (None, None))[0] or (row.content_hash if row else None)
            if row is None:
                row = ImageRecord(path=rel)
                summary.added += 1
            elif rows.get(rel) is not None and rows[rel].status != STATUS_PENDING:
                summary.updated += 1
            row.size, row.mtime_ns = st.st_size, st.st_mtime_ns
            row.content_hash = digest or content_hash(seen[rel][0])
            row.width, row.height, row.format = d.info.width, d.info.height, d.info.format
            row.status, row.error, row.embedded_at = STATUS_OK, None, now
            row.model_id, row.vector_seq, row.duplicate_of = mid, seq, None
            s.add(row)
            embedded_rows.append(row)
        s.flush()
        ids = [row.id for row in embedded_rows]
    summary.embedded += len(good)
    if good:
        ids_arr = np.array(ids, dtype=np.int64)
        store.remove(ids_arr)  # a changed file replaces its old vector
        store.add(ids_arr, vectors)


def _add_copies(run: _RunState, copies: list[tuple[str, str]], seq: int) -> None:
    catalog, store, summary, seen, mid, now = run.catalog, run.store, run.summary, run.seen, run.model_id, run.now
    with catalog.session() as s, s.begin():
        firsts = {
            h: i
            for h, i in s.execute(
                select(ImageRecord.content_hash, ImageRecord.id)
                .where(ImageRecord.status == STATUS_OK)
                .order_by(ImageRecord.id)
            )
            if h
        }
        new_ids, src_ids = [], []
        for rel, digest in copies:
            src = firsts.get(digest)
            _, st = seen[rel]
            row = s.scalars(select(ImageRecord).where(ImageRecord.path == rel)).first()
            if src is None:  # its original failed meanwhile: nothing to copy
                continue
            src_row = s.get(ImageRecord, src)
            if row is None:
                row = ImageRecord(path=rel)
                summary.added += 1
            else:
                summary.updated += 1
            row.size, row.mtime_ns, row.content_hash = st.st_size, st.st_mtime_ns, digest
            row.width, row.height, row.format = src_row.width, src_row.height, src_row.format
            row.status, row.error, row.embedded_at = STATUS_OK, None, now
            row.model_id, row.vector_seq = mid, seq
            s.add(row)
            s.flush()
            new_ids.append(row.id)
            src_ids.append(src)
    if new_ids:
        vecs = store.get(src_ids)
        store.remove(np.array(new_ids, dtype=np.int64))
        store.add(np.array(new_ids, dtype=np.int64), vecs)


def _refresh_duplicate_links(catalog: Catalog) -> None:
    """duplicate_of = the lowest id with the same content, for every byte-identical copy."""
    with catalog.engine.begin() as conn:
        conn.execute(text("UPDATE images SET duplicate_of = NULL WHERE duplicate_of IS NOT NULL"))
        conn.execute(
            text(
                "UPDATE images SET duplicate_of = (SELECT MIN(i2.id) FROM images i2 "
                "WHERE i2.content_hash = images.content_hash AND i2.status = 'ok') "
                "WHERE status = 'ok' AND content_hash IN (SELECT content_hash FROM images "
                "WHERE status = 'ok' GROUP BY content_hash HAVING COUNT(*) > 1)"
            )
        )
        conn.execute(text("UPDATE images SET duplicate_of = NULL WHERE duplicate_of = id"))


def _count_duplicates(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM images WHERE duplicate_of IS NOT NULL")).scalar() or 0)


def _save_store(idx: Path, store: VectorStore, catalog: Catalog, seq: int) -> int:
    """Save the store, then record that every row up to `seq` has its vector on disk."""
    store.save(idx / STORE)
    catalog.set_meta("store_seq", str(seq))
    return seq + 1
