"""Publishing a generation: the files readers open, written from the store after a run.

A publish (:func:`publish`) writes the search index (flat, or an approximate one rebuilt from the
store, or a delta over the previous generation's base when few vectors changed), the precomputed
neighbours and hit rows, links the model and the segments, and commits the generation: its
``manifest.json`` is written last (:func:`commit_generation`), so readers switch to the new files
all at once (indexer/generations.py). What the store and the search index are, and how an index
type is planned and tuned, is :mod:`indexer.vectors`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from encoder.atomic import atomic_writer

from . import delta, ondisk
from .catalog import Catalog
from .generations import (
    generation_dir_name,
    kill_point,
    link_into,
    link_model,
    restore_working,
    seal_generation,
    start_generation,
    tidy_generations,
)
from .hit_rows import HitRows, changed_rows, read_hit_rows, write_hit_rows
from .layout import HIT_ROWS, NEIGHBOURS, NEIGHBOURS_K, SEARCH, SEGMENTS, STORE
from .manifest import Manifest
from .neighbours import SCORE_ROWS, fingerprints, read_neighbours, table_dtype, update_neighbours, write_neighbours
from .segments import SegmentStore, has_segments, segment_files
from .vectors import (
    IndexPlan,
    VectorStore,
    apply_search_params,
    atomic_write_index,
    build_search_index,
    read_search_index,
    tune_search,
)


def refresh_neighbours(
    index_dir: Path, store: VectorStore, index: faiss.Index, k: int, *, progress: bool = False
) -> str:
    """Bring ``neighbours.npy`` up to date with the store, searching `index` (the store itself or
    the search index built from it) where rows must be searched again; `k` 0 removes the table.
    Returns what was done, in words. Vectors the old table describes (by fingerprint) keep their
    rows, so a new model, which changes every vector, recomputes everything by itself."""
    path = index_dir / NEIGHBOURS
    if k <= 0:
        path.unlink(missing_ok=True)
        return ""
    if len(store) > ondisk.NEIGHBOURS_MAX:
        # Published empty (every by-id query then searches): filling it would cost one search per
        # image; an empty table of width k, not none, so the indexer does not see it as missing.
        write_neighbours(np.zeros(0, dtype=table_dtype(k)), path)
        return f"no precomputed neighbours above {ondisk.NEIGHBOURS_MAX:,} images (one search each to fill)"
    ids, vecs = store.all_vectors()
    table, stats = update_neighbours(ids, vecs, index, read_neighbours(path, k), k=k, progress=progress)
    write_neighbours(table, path)
    return stats.describe()


def refresh_hit_rows(index_dir: Path, store: VectorStore, catalog: Catalog | None) -> None:
    """Write ``hit_rows.bin``: the catalog rows of the images in the store (None: remove it,
    so that it can never describe another generation)."""
    path = index_dir / HIT_ROWS
    if catalog is None:
        path.unlink(missing_ok=True)
        return
    stored = set(store.ids().tolist())
    write_hit_rows(HitRows.build(r for r in catalog.indexed_rows() if r[0] in stored), path)


def _exact_in_segments(index_dir: Path, store: VectorStore | SegmentStore) -> bool:
    """Whether `store` is the segment store saved in `index_dir`: a generation then links its
    segments, which servers read (indexer/exact.py), so no flat copy of the vectors is needed.
    ValueError if it has changes not saved yet (the files would not be the store published)."""
    if not isinstance(store, SegmentStore) or not has_segments(index_dir / SEGMENTS):
        return False
    if store.directory.resolve() != (index_dir / SEGMENTS).resolve():
        return False
    if store.unsaved:
        raise ValueError(f"{store.directory}: save the store before publishing it (a generation links its files)")
    return True


def publish(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    plan: IndexPlan,
    model_id: str | None,
    previous: Manifest | None,
    *,
    neighbours_k: int = NEIGHBOURS_K,
    catalog: Catalog | None = None,
    progress: bool = False,
    store_seq: int = 0,
    allow_delta: bool = True,
) -> Manifest:
    """Write ``vectors.faiss`` if the plan is flat (or the store is not the index's saved segments),
    (re)build the search index if the plan needs one, bring the neighbour table up to date
    (`neighbours_k` 0: none), write the hit rows of the stored images from `catalog` (None: no hit
    rows; hits are then read from the catalog), then make them a new generation
    (:func:`commit_generation`). A segment store must have been saved by the caller.
    `store_seq`: the catalog's sequence number of the store save published. When little changed
    since the previous generation's search index was built, that index is reused with a delta
    beside it (:func:`_publish_delta`) unless `allow_delta` is False."""
    kill_point("publish:begin")
    # The flat file costs 4 x dim bytes a *stored* vector at every publish (968 MB at 1M): written only
    # where it is the search index (<= FLAT_MAX vectors), or the store's only copy on disk.
    flat_file = plan.index_type == "flat" or not _exact_in_segments(index_dir, store)
    if flat_file:
        store.write_flat(index_dir / STORE)
    kill_point("publish:store")
    # The store's (id, fingerprint) table, read once: a delta compares it with the base's, a
    # rebuilt index publishes it as its own (1M x 240: a 1 GB read each time).
    store_table = functools.cache(lambda: _store_table(store))
    if allow_delta:
        published = _publish_delta(
            index_dir, store, store_table, plan, model_id, previous, neighbours_k, catalog, store_seq, flat_file
        )
        if published is not None:
            return published
    for name in (delta.DELTA, delta.HIT_ROWS_DELTA):  # a delta belongs to the base it was made over
        (index_dir / name).unlink(missing_ok=True)
    if plan.index_type == "flat":
        search_file = STORE
        size = (index_dir / STORE).stat().st_size
        index = store.index
    elif plan.index_type == ondisk.ONDISK:
        same = previous is not None and previous.index_type == plan.index_type and previous.model_id == model_id
        index, params, note = ondisk.refresh(
            index_dir,
            _store_chunks(store),
            len(store),
            plan.params,
            previous.files(index_dir) if same and previous is not None else None,
            previous.params if same and previous is not None else None,
        )
        plan = tune_search(index, store, IndexPlan(plan.index_type, params, f"{plan.reason}; {note}"))
        apply_search_params(index, plan.params)
        kill_point("publish:search")
        search_file = SEARCH
        size = sum((index_dir / name).stat().st_size for name in (SEARCH, *ondisk.ONDISK_FILES))
    else:
        index = build_search_index(store, plan)
        plan = tune_search(index, store, plan)
        atomic_write_index(index, index_dir / SEARCH)
        with atomic_writer(index_dir / delta.BASE_IDS) as fh:  # what the next publish measures a delta against
            np.lib.format.write_array(fh, store_table(), allow_pickle=False)
        kill_point("publish:search")
        search_file = SEARCH
        size = (index_dir / SEARCH).stat().st_size
    if plan.index_type == "flat":
        for name in (SEARCH, delta.BASE_IDS):
            (index_dir / name).unlink(missing_ok=True)
    if plan.index_type != ondisk.ONDISK:  # left by an on-disk index published before: not this one's
        (index_dir / ondisk.SEARCH_DATA).unlink(missing_ok=True)
    neighbours_note = refresh_neighbours(index_dir, store, index, neighbours_k, progress=progress)
    kill_point("publish:neighbours")
    refresh_hit_rows(index_dir, store, catalog)
    kill_point("publish:hit_rows")
    manifest = Manifest(
        generation=(previous.generation + 1) if previous else 1,
        count=len(store),
        dim=store.dim,
        model_id=model_id,
        index_type=plan.index_type,
        params=plan.params,
        reason=plan.reason,
        search_file=search_file,
        bytes_per_vector=round(size / max(1, len(store)), 1),
        neighbours_k=neighbours_k,
        neighbours=neighbours_note,
        store_seq=store_seq,
    )
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def _store_chunks(store: VectorStore | SegmentStore) -> Callable[[], ondisk.Chunks]:
    """What :func:`ondisk.refresh` reads the vectors from: a segment store's, block by block from its
    files (a run of rows in one segment is a view of the mapping, not a copy); any other store's
    from one copy of every vector (tests, benchmarks: they are in memory anyway). At 10M vectors the
    copy was 9.6 GB in the writer."""
    if isinstance(store, SegmentStore):
        return lambda: store.vector_blocks(store.ids(), ondisk.CHUNK)
    ids, vecs = store.all_vectors()
    return lambda: ondisk.chunked(ids, vecs)


def _store_table(store: VectorStore | SegmentStore) -> np.ndarray:
    """The (id, fingerprint) table of every stored vector, sorted by id (indexer/delta.py). A segment
    store's vectors are fingerprinted block by block from its files (16 bytes a vector held, not a
    copy of every vector: 9.6 GB at 10M)."""
    if isinstance(store, SegmentStore):
        ids = store.ids()
        fps = [fingerprints(block) for _, block in store.vector_blocks(ids, SCORE_ROWS)]
        return delta.base_table(ids, np.concatenate(fps) if fps else fingerprints(np.empty((0, store.dim), np.float32)))
    ids, vecs = store.all_vectors()
    return delta.base_table(ids, fingerprints(vecs))


def _publish_delta(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    store_table: Callable[[], np.ndarray],
    plan: IndexPlan,
    model_id: str | None,
    previous: Manifest | None,
    neighbours_k: int,
    catalog: Catalog | None,
    store_seq: int,
    flat_file: bool,
) -> Manifest | None:
    """Publish the previous generation's search index, neighbour table and hit rows unchanged,
    with a delta of what changed since that index was built (indexer/delta.py); None (nothing
    done) when a delta cannot be or should not be: another type, model or table width, no base
    table, or a change past the delta's bounds. Then the caller builds the index again."""
    if (
        previous is None
        or not previous.directory
        or plan.index_type == "flat"
        or previous.index_type != plan.index_type
        or previous.search_file != SEARCH
        or previous.model_id != model_id
        or previous.dim != store.dim
        or previous.neighbours_k != neighbours_k
    ):
        return None
    base = previous.files(index_dir)
    try:
        table = np.load(base / delta.BASE_IDS, allow_pickle=False)
    except (OSError, ValueError):
        return None  # built before every index had its table: the next build writes one
    if table.dtype != ondisk.IDS_DTYPE or table.ndim != 1 or len(table) < delta.DELTA_ABOVE:
        return None  # (the size bound checked before the store is read)
    now = store_table()
    change = delta.diff(table, now["id"], now["fp"])
    if not delta.within_bounds(change, len(table)):
        return None
    names = [SEARCH, delta.BASE_IDS] + ([ondisk.SEARCH_DATA] if plan.index_type == ondisk.ONDISK else [])
    names += [NEIGHBOURS] if neighbours_k > 0 else []
    try:
        restore_working(index_dir, base, names)
    except OSError:
        return None
    kill_point("publish:search")
    delta.write_delta(change, index_dir / delta.DELTA)
    kill_point("publish:neighbours")
    hit_rows = _delta_hit_rows(index_dir, base, store, catalog)
    kill_point("publish:hit_rows")
    info = previous.delta or {"base_generation": previous.generation, "base_reason": previous.reason}
    manifest = Manifest(
        count=len(store),
        dim=store.dim,
        model_id=model_id,
        index_type=previous.index_type,
        params=previous.params,
        reason=f"{info['base_reason']}; reused from generation {info['base_generation']} with a delta",
        search_file=SEARCH,
        bytes_per_vector=previous.bytes_per_vector,
        neighbours_k=neighbours_k,
        neighbours=f"generation {info['base_generation']}'s table, corrected for the delta at query time"
        if neighbours_k > 0
        else "",
        store_seq=store_seq,
        delta={
            "base_generation": info["base_generation"],
            "base_reason": info["base_reason"],
            "search": len(change.search),
            "hide": len(change.hide),
            "hit_rows": hit_rows,
        },
    )
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def _delta_hit_rows(index_dir: Path, base: Path, store: VectorStore | SegmentStore, catalog: Catalog | None) -> str:
    """The hit rows of a delta generation: the base's with the rows that differ laid over them
    ("layered"), or all of them anew when the base has none ("full"), or none without a catalog."""
    delta_rows = index_dir / delta.HIT_ROWS_DELTA
    delta_rows.unlink(missing_ok=True)
    if catalog is None:
        (index_dir / HIT_ROWS).unlink(missing_ok=True)
        return "none"
    try:
        restore_working(index_dir, base, [HIT_ROWS])
        base_rows = read_hit_rows(index_dir / HIT_ROWS)
    except OSError:
        base_rows = None
    if base_rows is None:
        refresh_hit_rows(index_dir, store, catalog)
        return "full"
    stored = set(store.ids().tolist())
    write_hit_rows(changed_rows(base_rows, (r for r in catalog.indexed_rows() if r[0] in stored)), delta_rows)
    return "layered"


def republish_derived(
    index_dir: Path,
    store: VectorStore | SegmentStore,
    manifest: Manifest,
    *,
    neighbours_k: int = NEIGHBOURS_K,
    catalog: Catalog | None = None,
    progress: bool = False,
) -> Manifest:
    """Bring only what is derived from an unchanged store up to date (the neighbour table, the
    hit rows: deleted, damaged, or made by an older lookalike) and publish a new generation.
    The search index is reused as it is: rebuilding HNSW at 1M vectors takes half an hour."""
    previous = replace(manifest)
    if manifest.search_file == STORE:
        index = store.index
    else:
        index = read_search_index(index_dir / manifest.search_file, manifest.params)
    manifest.neighbours = refresh_neighbours(index_dir, store, index, neighbours_k, progress=progress)
    manifest.neighbours_k = neighbours_k
    refresh_hit_rows(index_dir, store, catalog)
    flat_file = manifest.search_file == STORE or not _exact_in_segments(index_dir, store)
    commit_generation(index_dir, manifest, previous, flat_file=flat_file)
    return manifest


def commit_generation(
    index_dir: Path, manifest: Manifest, previous: Manifest | None, *, flat_file: bool = True
) -> None:
    """Make the working files just written a new generation directory, then switch ``manifest.json``
    to it (the one write readers act on), then remove generations older than `previous` (a reader
    may be opening that one right now). Sets `manifest`'s generation and directory. `flat_file`:
    the generation has a ``vectors.faiss``; without, one left in the index directory by an earlier
    publish is deleted once the switch is made (the generations that have it keep their links)."""
    manifest.generation = (previous.generation + 1) if previous else 1
    manifest.directory = generation_dir_name(manifest.generation)
    gen = start_generation(index_dir, manifest.generation)
    names = [STORE] if flat_file else []
    names += [f"{SEGMENTS}/{name}" for name in segment_files(index_dir / SEGMENTS)]
    if manifest.search_file != STORE:
        names.append(manifest.search_file)
        if (index_dir / delta.BASE_IDS).exists():  # an index built before every type had one has none
            names.append(delta.BASE_IDS)
    if manifest.index_type == ondisk.ONDISK:
        names.append(ondisk.SEARCH_DATA)
    if manifest.delta:
        names.append(delta.DELTA)
        if manifest.delta.get("hit_rows") == "layered":
            names.append(delta.HIT_ROWS_DELTA)
    if manifest.neighbours_k > 0 and (index_dir / NEIGHBOURS).exists():
        names.append(NEIGHBOURS)
    if (index_dir / HIT_ROWS).exists():  # refresh_hit_rows removes it when there are none to publish
        names.append(HIT_ROWS)
    link_into(gen, index_dir, names)
    link_model(gen, index_dir)
    manifest.write(gen)  # the generation describes itself (for people; readers read the pointer)
    kill_point("generation:manifest")
    seal_generation(gen)
    manifest.write(index_dir, stamp=False)  # the same manifest as the generation's own copy
    kill_point("pointer")
    if not flat_file:  # only now: before the switch, an index from before generations still reads it
        (index_dir / STORE).unlink(missing_ok=True)
    tidy_generations(index_dir, manifest.generation, point="cleanup")
