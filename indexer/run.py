"""The state of one `build_index` run, which its stages (indexer/build.py) read and update."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from encoder import Encoder

from .catalog import Catalog, utcnow
from .layout import SHARDS
from .schema import CatalogRow
from .segments import SegmentStore

#: A model is outgrown when its folder holds this many times the images it was fitted to: three in four
#: indexed images were then never seen by its training, its VLAD words, projection or centring
#: (the same 4x at which the on-disk index retrains its quantiser, indexer/ondisk.py).
OUTGROWN = 4


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
    adopted: int = 0  # files whose vectors a killed run's workers had left in the spool (indexer/shard_file.py)
    failed: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0
    total: int = 0
    duration_s: float = 0.0
    images_per_second: float = 0.0
    index_type: str = ""
    index_reason: str = ""
    neighbours: str = ""  # what this run did to the precomputed neighbour table ("" if nothing)
    merged: str = ""  # the on-demand merge of the vector segments, in words ("" if none was asked for)
    trained: bool = False
    train_s: float = 0.0  # part of duration_s spent training a model first (images_per_second excludes it)
    model_images: int = 0  # images the model and its search vector were fitted to (0: not recorded)

    @property
    def outgrown(self) -> bool:
        """The folder has outgrown the model: at most 1/OUTGROWN of the indexed images were in its fit."""
        return self.model_images > 0 and self.total >= OUTGROWN * self.model_images

    @property
    def outgrown_now(self) -> bool:
        """This run is the one that crossed :attr:`outgrown` (what a watch loop says once)."""
        return self.outgrown and self.total - self.added < OUTGROWN * self.model_images

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return d


@dataclass(frozen=True)
class RunOptions:
    """What `build_index` was asked, beyond the folder and the model."""

    index_type: str
    reembed: bool  # every image is embedded again (asked for, or the model changed)
    workers: int | None
    batch_size: int
    max_pixels: int
    progress: bool
    checkpoint_every_s: float
    neighbours: int
    merge: bool = False  # merge every vector segment into one before publishing (on demand)


@dataclass
class IndexRun:
    """One run: what it has open, and what its stages have found so far."""

    root: Path
    idx: Path
    catalog: Catalog
    encoder: Encoder
    store: SegmentStore
    summary: IndexSummary
    options: RunOptions
    #: The sequence number the next store save records (see ImageRecord.vector_seq).
    seq: int = 1
    #: True once the store or the catalog's set of indexed images differs from the last publish.
    changed: bool = False
    #: Every image file found, by relative '/'-separated path, in path order.
    seen: dict[str, tuple[str, os.stat_result]] = field(default_factory=dict)  # relative path -> (path, stat)
    #: The catalog's rows as the run found them, by path.
    rows: dict[str, CatalogRow] = field(default_factory=dict)  # the catalog as the walk found it
    #: (content hash, None) or (None, why unreadable) of each new or changed file.
    hashes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    #: embedded_at of every row this run embeds.
    now: datetime = field(default_factory=utcnow)
    #: Shard files in the spool (layout.SHARDS) ingested since the last store save: removed by the next.
    spooled: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def save_store(self) -> None:
        """Checkpoint the store (a new segment of what changed), then record that every row up to
        :attr:`seq` has its vector on disk; then merge segments if the merge policy says so (a merge
        changes where vectors are, not which: the catalog need not know)."""
        self.store.save(seq=self.seq)
        self.catalog.set_store_seq(self.seq)
        self.seq += 1
        for name in self.spooled:  # their vectors are on disk now, and their rows say so
            (self.idx / SHARDS / name).unlink(missing_ok=True)
        self.spooled.clear()
        self.store.merge_if_due()
