"""A snapshot: one published generation of an index, opened read-only.

The engine (:mod:`search.engine`) answers every query from one snapshot and swaps in the next when
``lookalike index`` publishes; this module opens one. Only files inside the generation's own
directory are read (indexer/generations.py), so a publish under way, or killed halfway, is never
half seen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from encoder import Encoder
from indexer import Manifest
from indexer.delta import DELTA, HIT_ROWS_DELTA, DeltaIndex, read_delta
from indexer.exact import ExactVectors, open_exact_vectors, read_mapped
from indexer.hit_rows import HitRows, LayeredHitRows, read_hit_rows
from indexer.layout import HIT_ROWS, MANIFEST, NEIGHBOURS
from indexer.neighbours import lookup, read_neighbours
from indexer.segments import SegmentError

from .errors import EngineError
from .pair_scale import PairScale, index_pair_scale

log = logging.getLogger(__name__)

#: Tries at opening the generation the manifest names, when it is removed under us (see open_current).
OPEN_ATTEMPTS = 3


@dataclass
class Snapshot:
    """One published generation of the index, opened read-only."""

    manifest: Manifest
    vectors: ExactVectors  # exact vectors by id: the flat store, or the generation's segments (indexer/exact.py)
    search: faiss.Index | DeltaIndex  # what unfiltered queries search: the flat store itself, or HNSW/IVF
    encoder: Encoder
    neighbours: np.ndarray | None = None  # precomputed neighbours by id (memory-mapped), if published
    neighbour_ids: np.ndarray | None = None  # its id column, contiguous in memory (8 bytes an image)
    hit_rows: HitRows | LayeredHitRows | None = None  # path, width, height by id (memory-mapped), if published
    #: Cosines of random pairs of this generation's vectors, for each hit's percentile (search/pair_scale.py).
    pair_scale: PairScale | None = None

    @property
    def delta(self) -> DeltaIndex | None:
        """The search index as a base and a delta (indexer/delta.py), or None."""
        return self.search if isinstance(self.search, DeltaIndex) else None

    def table_neighbours(self, image_id: int, want: int) -> list[tuple[int, float]] | None:
        """The first `want` neighbours of an indexed image from the published table, or None
        when the table cannot answer (no table, a deeper page than it holds, an unknown id)."""
        if self.neighbours is None:
            return None
        row = lookup(self.neighbours, image_id, self.neighbour_ids)
        if row is None:
            return None
        nbr, sim = row
        delta = self.delta
        if delta is not None:
            # The table is the base's: drop the neighbours changed or removed since, and merge in
            # the delta's (exact) ones. What is left of the row is still the base's best, in order.
            if delta.changed(image_id):
                return None  # its own row describes its old vector, or it has none
            live = ~delta.hidden(nbr)
            nbr, sim = nbr[live], sim[live]
            if len(nbr) < want:
                return None
            extra_sim, extra = delta.exact(self.vectors.get(np.array([image_id], dtype=np.int64))[0], want)
            both = sorted(
                zip(nbr[:want].tolist() + extra.tolist(), sim[:want].tolist() + extra_sim.tolist(), strict=True),
                key=lambda p: -p[1],
            )
            return both[:want]
        # A short row is complete only if it lists every other image.
        if len(nbr) < want and len(nbr) < self.manifest.count - 1:
            return None
        return list(zip(nbr[:want].tolist(), sim[:want].tolist(), strict=True))


def open_current(
    index_dir: Path, previous: Snapshot | None, *, device: str | None, max_pixels: int
) -> tuple[Snapshot, float]:
    """(the generation that ``manifest.json`` names, opened; the manifest's mtime as it was read).
    `previous`: the snapshot in use, whose model is reused when the new one was made by the same."""
    for attempt in range(OPEN_ATTEMPTS):
        mtime = (index_dir / MANIFEST).stat().st_mtime
        manifest = Manifest.read(index_dir)
        if manifest is None:
            raise EngineError(f"{index_dir}: manifest.json vanished")
        try:
            return open_generation(index_dir, manifest, previous, device=device, max_pixels=max_pixels), mtime
        except (OSError, RuntimeError, SegmentError):  # faiss raises RuntimeError for a file it cannot open
            # Two publishes between reading the manifest and opening its files remove that
            # generation: open the one the manifest names now. Anything else is a real error.
            again = Manifest.read(index_dir)
            if attempt + 1 == OPEN_ATTEMPTS or again is None or again.directory == manifest.directory:
                raise
    raise AssertionError("unreachable")


def open_generation(
    index_dir: Path, manifest: Manifest, previous: Snapshot | None, *, device: str | None, max_pixels: int
) -> Snapshot:
    """The generation `manifest` names, opened: its search index (with its delta), exact vectors,
    model, precomputed neighbours and hit rows; and the scale of its pairs' similarities."""
    files = manifest.files(index_dir)  # the index directory itself for an index from before generations
    search = read_mapped(files / manifest.search_file, manifest.params)
    vectors = open_exact_vectors(files, manifest, search)
    if manifest.delta:
        change = read_delta(files / DELTA)
        found = vectors.get(change.search) if len(change.search) else np.zeros((0, manifest.dim), np.float32)
        search = DeltaIndex(search, change, found)
    if previous is not None and previous.manifest.model_id == manifest.model_id:
        encoder = previous.encoder  # same model: no need to load it again
    else:
        encoder = Encoder(manifest.model_dir(index_dir), device=device, max_pixels=max_pixels)
    log.debug("opened index generation %d (%d vectors, %s)", manifest.generation, manifest.count, manifest.index_type)
    neighbours = neighbour_ids = None
    if manifest.neighbours_k > 0:
        neighbours = read_neighbours(files / NEIGHBOURS, manifest.neighbours_k)
        if neighbours is not None:
            neighbour_ids = np.ascontiguousarray(neighbours["id"])
    hit_rows = open_hit_rows(files, manifest)
    pair_scale = index_pair_scale(vectors)
    return Snapshot(manifest, vectors, search, encoder, neighbours, neighbour_ids, hit_rows, pair_scale)


def open_hit_rows(files: Path, manifest: Manifest) -> HitRows | LayeredHitRows | None:
    """The generation's published hit rows; None (rows then come from the catalog) when it has
    none, or any part of them is missing or damaged."""
    published = manifest.delta.get("hit_rows", "full")
    if published == "none":
        return None
    rows = read_hit_rows(files / HIT_ROWS)
    if published == "layered":
        top = read_hit_rows(files / HIT_ROWS_DELTA)
        return None if rows is None or top is None else LayeredHitRows(rows, top)
    return rows
