"""`build_index`: bring an index directory up to date with a folder of images.

Read top to bottom: lock -> model (given, kept, or trained) -> catalog + store
-> reconcile after any crash -> walk and diff (indexer/walk.py) -> decode and
embed (indexer/embed.py) -> exact-duplicate copies -> publish. The state the
stages share is one :class:`~indexer.run.IndexRun`.

Crash safety: a catalog row is committed *before* its vector reaches the
store (a new segment, indexer/segments.py), and carries the sequence number of
the store save that will hold it. On the next run, rows newer than the last
completed save, or whose id is missing from the store, are embedded again;
vectors without a row are dropped. Catalog ids are never reused, so a stale
vector cannot be paired with a different file. A damaged segment (bad
checksum, truncated) is dropped with every newer one when the store opens; rows
saved since the oldest save it held are then embedded again too.

An index from before segments has its single-file store (``vectors.faiss``)
moved into a first segment when it is opened; until the segment list is
written, that file stays the store, so a kill during the move loses nothing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select, update

from encoder import ModelConfig, TrainConfig
from encoder.atomic import TMP_SUFFIX
from encoder.errors import LookalikeError
from encoder.images import DEFAULT_MAX_PIXELS
from encoder.training import RESUME_DIR

from .catalog import Catalog, in_chunks
from .delta import HIT_ROWS_DELTA
from .embed import add_copies, cpu_thread_budget, default_decode_workers, embed_files
from .exact import generation_has_vectors
from .generations import tidy_generations
from .hit_rows import read_hit_rows
from .index_model import IndexBuildError, IndexLockedError, prepare_model
from .layout import HIT_ROWS, LOCK, MODEL_DIR, NEIGHBOURS, NEIGHBOURS_K, SEGMENTS, SHARDS, STORE, default_index_dir
from .manifest import Manifest
from .migrate import migrate_store
from .neighbours import read_neighbours
from .publish import publish, republish_derived
from .run import IndexRun, IndexSummary, RunOptions
from .schema import STATUS_OK, STATUS_PENDING, ImageRecord
from .segments import SegmentStore, has_segments
from .vectors import plan_index
from .walk import diff_folder

__all__ = ["IndexSummary", "build_index", "cpu_thread_budget", "default_decode_workers", "index_lock"]

log = logging.getLogger(__name__)

SAVE_EVERY_S = 20.0  # default: checkpoint the store (write a segment) at least this often during a long run


@contextmanager
def index_lock(index_dir: Path) -> Iterator[None]:
    """One writer at a time. flock is released by the OS if the process dies."""
    fh = open(index_dir / LOCK, "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexLockedError(f"{index_dir}: another `lookalike index` is running on this index") from None
        yield
    finally:
        fh.close()


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
    merge: bool = False,
) -> IndexSummary:
    """Index (or update the index of) every image under `folder`. Returns what changed.

    `neighbours`: how many nearest neighbours of each image to precompute for by-id
    queries (indexer/neighbours.py); 0 for none. `merge`: merge every vector segment into one
    before publishing (they are otherwise merged by policy, indexer/segments.py ``plan_merge``).

    The stages, in order, under the index's lock:

    1. model: the one given, the one in the index, or one trained on `folder` first;
    2. open: catalog and store, reconciled after a crash or a model change;
    3. walk and diff (:func:`~indexer.walk.diff_folder`): unchanged files by size and
       mtime, moves and copies by content hash, unreadable files, deleted files;
    4. decode and embed (:func:`~indexer.embed.embed_files`) in batches, each committed,
       the store saved every `checkpoint_every_s` seconds;
    5. copies (:func:`~indexer.embed.add_copies`): a byte-identical copy takes the
       vector of its first copy;
    6. publish: the store, the search index, the neighbour table, the hit rows, linked
       into a new generation directory that the manifest then names (indexer/generations.py),
       when anything changed (or only the derived files, when stale).
    """
    if neighbours < 0:
        raise IndexBuildError("neighbours must be >= 0")
    t0 = time.perf_counter()
    root = Path(folder).resolve()
    if not root.is_dir():
        raise IndexBuildError(f"{folder}: not a folder")
    idx = Path(index_dir).resolve() if index_dir else default_index_dir(root)
    created = not idx.exists()
    idx.mkdir(parents=True, exist_ok=True)
    summary = IndexSummary(root=str(root), index_dir=str(idx))
    try:
        with index_lock(idx):
            _remove_leftover_temps(idx)
            choice = prepare_model(root, idx, model_dir, reembed, model_config, train_config, device)
            encoder = choice.encoder
            summary.trained, summary.train_s = choice.trained_s is not None, choice.trained_s or 0.0
            summary.model_images = int(encoder.meta.get("images") or 0)
            encoder.max_pixels = max_pixels
            options = RunOptions(
                index_type=index_type,
                reembed=choice.reembed,
                workers=workers,
                batch_size=batch_size,
                max_pixels=max_pixels,
                progress=progress,
                checkpoint_every_s=checkpoint_every_s,
                neighbours=neighbours,
                merge=merge,
            )
            catalog = Catalog.for_directory(idx, catalog_url)
            try:
                catalog.ensure_model(encoder.model_id, encoder.config.kind, encoder.config.to_dict())
                if catalog.get_meta("root") != str(root):
                    catalog.set_meta("root", str(root))  # where the files are: the server serves only these
                manifest = Manifest.read(idx)
                tidy_generations(idx, manifest.generation if manifest else 0)
                store = _open_store(idx, encoder.dim, options.reembed, catalog.store_seq())
                run = IndexRun(root, idx, catalog, encoder, store, summary, options, seq=catalog.store_seq() + 1)
                run.changed = _reconcile(run)
                work = diff_folder(run)
                embed_files(run, work.to_decode)
                add_copies(run, work.copies)
                catalog.refresh_duplicate_links()
                summary.duplicates = catalog.count_duplicates()
                _publish(run, manifest)
            finally:
                catalog.close()
    except LookalikeError:
        if created:  # e.g. an empty folder: leave no empty .lookalike/ behind
            _remove_if_empty(idx)
        raise
    summary.duration_s = round(time.perf_counter() - t0, 3)
    indexing_s = summary.duration_s - summary.train_s
    summary.images_per_second = round(summary.embedded / indexing_s, 1) if indexing_s > 0 else 0.0
    return summary


def _remove_leftover_temps(idx: Path) -> None:
    """Temporary files of atomic writes (``.NAME.*.tmp``) that a killed writer left in the index
    or its model. Under the writer lock nobody else is writing them; the thumbnail cache, which a
    running server writes to, is left alone."""
    for folder in (idx, idx / MODEL_DIR, idx / MODEL_DIR / RESUME_DIR, idx / SHARDS):
        for tmp in folder.glob(f".*{TMP_SUFFIX}"):
            log.info("removing %s, left by an interrupted run", tmp)
            tmp.unlink(missing_ok=True)


def _remove_if_empty(idx: Path) -> None:
    """Remove an index directory this run created if nothing but its lock and empty folders are in
    it. Anything else (a half-trained model's resume state, say) is kept for the next run."""
    if all(p.is_dir() or p.name == LOCK for p in idx.rglob("*")):
        shutil.rmtree(idx, ignore_errors=True)


def _open_store(idx: Path, dim: int, reembed: bool, saved_seq: int) -> SegmentStore:
    """The index's segment store; an index from before segments has its ``vectors.faiss`` (which
    then holds saves up to `saved_seq`) moved into a first segment."""
    directory = idx / SEGMENTS
    if not has_segments(directory) and (idx / STORE).exists():
        migrate_store(idx / STORE, directory, seq=saved_seq)
    store = SegmentStore.open(directory, dim)
    if store.dim != dim:
        if not reembed:
            raise IndexBuildError(
                f"{idx}: stored vectors have {store.dim} dimensions, the model makes {dim}; pass --reembed"
            )
        return SegmentStore(directory, dim, [])  # its first save replaces the list (the old files go then)
    return store


def _reconcile(run: IndexRun) -> bool:
    """Make catalog and store agree after a crash (or a model change). Returns True if anything moved."""
    catalog, store, mid, reembed = run.catalog, run.store, run.model_id, run.options.reembed
    saved_seq = catalog.store_seq()
    if store.trusted_seq is not None:  # a damaged segment was dropped: rows saved since lost their vectors
        saved_seq = min(saved_seq, store.trusted_seq)
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
        for chunk in in_chunks(suspect):
            s.execute(update(ImageRecord).where(ImageRecord.id.in_(chunk)).values(status=STATUS_PENDING))
        keep = {i for i, _ in ok_rows} - set(suspect)
    orphans = [i for i in stored if i not in keep]
    if orphans:
        store.remove(orphans)
    if suspect or orphans:
        log.info("reconciled: %d rows to re-embed, %d vectors without a row dropped", len(suspect), len(orphans))
        changed = True
    return changed


def _publish(run: IndexRun, manifest: Manifest | None) -> None:
    """Publish a new generation if the run changed anything (or the published one does not
    match the store, the model or the index type asked for); else bring only the derived
    files (neighbour table, hit rows) up to date if they are stale."""
    catalog, store, summary, opts, idx = run.catalog, run.store, run.summary, run.options, run.idx
    k = opts.neighbours
    summary.total = catalog.count(STATUS_OK)
    plan = plan_index(len(store), store.dim, opts.index_type)
    merged = opts.merge and _merge_segments(run)
    needs_publish = (
        merged  # the generation must link the merged segment, or the old ones stay on disk with it
        or run.changed
        or manifest is None
        or not manifest.directory  # published before generations: upgrade it
        or not generation_has_vectors(manifest.files(idx), manifest)  # its generation is gone
        or manifest.store_seq != catalog.store_seq()  # saved since, by a run killed before it published
        or manifest.count != len(store)
        or manifest.model_id != run.model_id
        or (
            opts.index_type != "auto"
            and (manifest.index_type, manifest.params.get("codes")) != (plan.index_type, plan.params.get("codes"))
        )
    )
    derived_stale = manifest is not None and (
        manifest.neighbours_k != k
        # The writer's working copy (which the next publish updates) or the published one (which readers
        # open) deleted, damaged, or from an older version: both are hard links to one file until then.
        or any(_derived_damaged(folder, k, manifest) for folder in {idx, manifest.files(idx)})
    )
    if needs_publish or (derived_stale and manifest is not None and manifest.delta):
        # A delta generation's derived files are its base's, corrected by its readers: damaged,
        # they are made again with the index (allow_delta=False), not recomputed on their own.
        run.save_store()
        manifest = publish(
            idx,
            store,
            plan,
            run.model_id,
            manifest,
            neighbours_k=k,
            catalog=catalog,
            progress=opts.progress,
            store_seq=catalog.store_seq(),
            allow_delta=not derived_stale,
        )
        summary.neighbours = manifest.neighbours
    elif derived_stale:
        _distrust_working_table(idx, manifest, k)
        manifest = republish_derived(idx, store, manifest, neighbours_k=k, catalog=catalog, progress=opts.progress)
        summary.neighbours = manifest.neighbours
    summary.index_type = manifest.index_type
    summary.index_reason = manifest.reason


def _merge_segments(run: IndexRun) -> bool:
    """Save the store, then merge all its segments into one (`lookalike index --merge`).
    Returns whether anything was merged; says what in the summary."""
    if run.store.unsaved:  # a merge joins saved segments (a save of nothing would only move the seq on)
        run.save_store()
    before = len(run.store.segments)
    merged = run.store.merge()
    run.summary.merged = (
        f"{before} vector segments merged into 1" if merged else f"{before} vector segment, nothing to merge"
    )
    return merged


def _derived_damaged(folder: Path, k: int, manifest: Manifest) -> bool:
    """True if the neighbour table (when `k` > 0) or the hit rows in `folder` (with a delta's own, when
    `manifest` publishes them layered) are missing or unreadable."""
    hit_rows = [HIT_ROWS] + ([HIT_ROWS_DELTA] if manifest.delta.get("hit_rows") == "layered" else [])
    return (k > 0 and read_neighbours(folder / NEIGHBOURS, k) is None) or any(
        read_hit_rows(folder / name) is None for name in hit_rows
    )


def _distrust_working_table(idx: Path, manifest: Manifest, k: int) -> None:
    """A published neighbour table found deleted or damaged is recomputed from scratch, not merged
    from the writer's working copy: the two were one file, so that copy is as suspect."""
    published = manifest.files(idx) / NEIGHBOURS
    if k > 0 and published != idx / NEIGHBOURS and read_neighbours(published, k) is None:
        (idx / NEIGHBOURS).unlink(missing_ok=True)
