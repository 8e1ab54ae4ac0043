"""The vector store as append-only segments: exact vectors keyed by catalog id, the source of truth.

A checkpoint writes what is new, never what exists: one *segment* (``segments/NNNNNNNN.*``)
holding the vectors added since the last checkpoint and the ids they supersede, then a new
``segments/list.json`` naming it. At 10M vectors the old single-file store rewrote 9.7 GB per
checkpoint; a segment costs ~968 bytes per *new* vector (240 dims).

A segment is four files, written in this order, each fsynced:

- ``NAME.ids.npy``        (n,) int64: the catalog ids of its vectors, each once;
- ``NAME.vectors.npy``    (n, dim) float32: the vectors, row i for ids[i];
- ``NAME.tombstones.npy`` (t,) int64: ids whose vectors in *older* segments are superseded
  (removed, or replaced by a row of this segment);
- ``NAME.json``           the header: dim, counts, the save sequence numbers it holds
  (``seq_min``/``seq_max``, see ImageRecord.vector_seq) and each array file's byte size and
  CRC-32 of its data. Written last (atomically): it is the commit point of the segment.

``list.json`` (atomic) names the live segments, oldest first: it is the commit point of a
checkpoint or a merge. Files it does not name (a killed checkpoint's or merge's) are removed
by the next writer. Reading the list in order, a segment's tombstones apply before its own ids,
and the newest occurrence of an id wins. Readers ``np.load(mmap_mode="r")`` the arrays, so
opening a store reads its ids, not its vectors.

Merges (:meth:`SegmentStore.merge_if_due`, or :meth:`SegmentStore.merge` on demand) copy the live
rows of a run of the newest segments into one new segment, switch the list, then delete the inputs
(a published generation keeps hard links to them, so its readers are not disturbed). The policy,
:func:`plan_merge`: more than a quarter of the stored rows dead -> merge everything (space and
scan cost bounded to 1.33x the live vectors); more than MAX_SEGMENTS segments -> merge the newest
segments from the oldest one that is no larger than all the segments after it (a binary-counter
scheme: each vector is rewritten O(log N) times over a store's life; a 1M-vector base segment is
not rewritten for a few thousand new vectors).

Damage (a bad checksum, a truncated or missing file) is detected when the writer opens the store:
the damaged segment and every newer one are dropped with a warning, and :attr:`SegmentStore.trusted_seq`
says which catalog rows still have their vectors (those saved before the damaged segment's oldest
save); the indexer embeds the others again (indexer/build.py). A read-only open raises SegmentError.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from encoder.atomic import atomic_write_via, fsync_dir

from .generations import kill_point
from .layout import SEGMENT_LIST
from .rowio import PREFETCH_ROWS, advise_random, pread_rows, prefetch_rows
from .segment_file import (
    PARTS,
    Segment,
    SegmentError,
    has_segments,
    header_seq_min,
    next_name,
    read_segment,
    segment_files,
    write_list,
    write_segment,
)

__all__ = [
    "SegmentError",
    "SegmentStore",
    "has_segments",
    "plan_merge",
    "segment_files",
]

log = logging.getLogger(__name__)

#: More segments than this after a checkpoint: merge the newest ones (see plan_merge).
MAX_SEGMENTS = 16
#: More of the stored rows dead than this: merge everything.
MAX_DEAD_FRACTION = 0.25
_CHUNK_ROWS = 65_536  # rows copied at a time by a merge or migration: bounded memory at any size


def plan_merge(rows: list[int], live: int) -> int | None:
    """Where the run of newest segments to merge starts (an index into `rows`, the row counts of
    the segments oldest first, `live` rows of them alive), or None when no merge is due."""
    total = sum(rows)
    if total and (total - live) / total > MAX_DEAD_FRACTION:
        return 0
    if len(rows) <= MAX_SEGMENTS:
        return None
    for i in range(len(rows) - 1):
        if rows[i] <= sum(rows[i + 1 :]):
            return i
    return len(rows) - 2


def row_chunks(vectors: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    """The rows `rows` of `vectors`, _CHUNK_ROWS at a time: what a checkpoint, a merge or a migration
    streams into a new segment, in bounded memory."""
    for start in range(0, len(rows), _CHUNK_ROWS):
        yield vectors[rows[start : start + _CHUNK_ROWS]]


# ---------------------------------------------------------------- the store


class SegmentStore:
    """Exact vectors keyed by int64 id, kept as append-only segments (see the module doc).

    In memory: the live ids, sorted, and where each one's vector is: a *global row*, the row in the
    concatenation of the segments (oldest first) followed by the vectors added since the last save.
    """

    def __init__(self, directory: Path, dim: int, segments: list[Segment], *, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.dim = dim
        self.segments = segments
        self.writable = writable
        #: Catalog rows whose vector_seq is above this may have lost their vectors to a damaged
        #: segment dropped on open (None: nothing was dropped).
        self.trusted_seq: int | None = None
        self._dirty = not segments  # an empty store writes its list (naming no old segment) at its first save
        self._pending: list[np.ndarray] = []  # vectors added since the last save, in global-row order
        self._pending_rows = 0
        self._pending_matrix: np.ndarray | None = None
        self._tombstones: list[np.ndarray] = []  # saved ids removed since the last save
        self._index: faiss.Index | None = None
        self._random = False  # advise_random was called: small gathers are read with pread
        self._files: dict[str, int] = {}  # segment name -> a read-only descriptor of its vectors file
        self._rebuild_locations()

    # ---- opening

    @classmethod
    def open(cls, directory: Path, dim: int, *, writable: bool = True, verify: bool | None = None) -> SegmentStore:
        """The store in `directory` (an empty one of `dim` if it has none yet; a store there of another
        dimension keeps its own: compare :attr:`dim`). The writer (`writable`) verifies checksums and
        drops damaged segments (see the module doc) and removes files no segment of the list owns; a
        reader only checks sizes and raises SegmentError on damage. `verify` overrides the checksum check."""
        directory = Path(directory)
        verify = writable if verify is None else verify
        try:
            listing = json.loads((directory / SEGMENT_LIST).read_text())
        except FileNotFoundError:
            if writable:
                directory.mkdir(parents=True, exist_ok=True)
            return cls(directory, dim, [], writable=writable)
        dim = int(listing["dim"])
        segments: list[Segment] = []
        trusted: int | None = None
        for name in listing["segments"]:
            try:
                segments.append(read_segment(directory, name, dim, verify=verify))
            except SegmentError as exc:
                if not writable:
                    raise
                seq_min = header_seq_min(directory, name, segments)
                trusted = seq_min - 1
                log.warning(
                    "%s; dropping it and every newer segment: rows saved since %d are embedded again", exc, seq_min
                )
                break
        store = cls(directory, dim, segments, writable=writable)
        if trusted is not None:
            store.trusted_seq, store._dirty = trusted, True
        if writable:  # a damaged segment's files go only once a list without it is written (save)
            store._collect_garbage(listing["segments"])
        return store

    def _rebuild_locations(self) -> None:
        """The live ids and their global rows, from the segments: the last event of each id wins,
        a segment's tombstones coming before its own ids."""
        offsets = np.cumsum([0] + [len(s.ids) for s in self.segments])
        self._offsets = offsets
        ids, order, where, alive = [], [], [], []
        for k, s in enumerate(self.segments):
            for arr, is_row in ((s.tombstones, False), (s.ids, True)):
                ids.append(np.asarray(arr, dtype=np.int64))
                order.append(np.full(len(arr), 2 * k + is_row, dtype=np.int64))
                where.append(offsets[k] + np.arange(len(arr)) if is_row else np.full(len(arr), -1))
                alive.append(np.full(len(arr), is_row))
        if not ids:
            self._ids, self._where = np.empty(0, np.int64), np.empty(0, np.int64)
            return
        all_ids, all_order = np.concatenate(ids), np.concatenate(order)
        all_where, all_alive = np.concatenate(where).astype(np.int64), np.concatenate(alive)
        sort = np.lexsort((all_order, all_ids))  # by id, then by age: an id's last entry is its newest event
        last = np.r_[all_ids[sort][1:] != all_ids[sort][:-1], True]
        newest = sort[last]
        keep = newest[all_alive[newest]]
        self._ids, self._where = all_ids[keep], all_where[keep]  # sorted by id (lexsort is stable by id)

    # ---- the interface the indexer uses (as VectorStore's)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def _saved_rows(self) -> int:
        return int(self._offsets[-1])

    def ids(self) -> np.ndarray:
        """Every stored id, ascending."""
        return self._ids.copy()

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Store `vectors` under `ids` (unique), replacing any vector already stored under them."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        self._check_writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        self.remove(ids)
        order = np.argsort(ids, kind="stable")
        where = self._saved_rows + self._pending_rows + order  # the rows they are appended at, sorted with ids
        pos = np.searchsorted(self._ids, ids[order])
        self._ids = np.insert(self._ids, pos, ids[order])
        self._where = np.insert(self._where, pos, where)
        self._pending.append(vectors.copy())
        self._pending_rows += len(ids)
        self._pending_matrix, self._index = None, None

    def replace(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Add, first removing any vectors already stored under these ids (what :meth:`add` does)."""
        self.add(ids, vectors)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Forget the vectors of `ids`; returns how many were stored."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not len(ids) or not len(self._ids):
            return 0
        self._check_writable()
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        pos = pos[self._ids[pos] == ids]
        if not len(pos):
            return 0
        saved = self._where[pos] < self._saved_rows
        if saved.any():
            self._tombstones.append(self._ids[pos[saved]])
        self._ids, self._where = np.delete(self._ids, pos), np.delete(self._where, pos)
        self._index = None
        return len(pos)

    def contains(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """A bool mask: which of `ids` are stored."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(self._ids):
            return np.zeros(len(ids), dtype=bool)
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        return self._ids[pos] == ids

    @property
    def unsaved(self) -> bool:
        """Whether a save would write anything: vectors added or removed since the last one (what
        :meth:`save` tests), so the files on disk are not yet the store."""
        return bool(self._dirty or self._tombstones or (self._where >= self._saved_rows).any())

    def get(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Vectors for `ids`, (len(ids), dim) float32 (KeyError for an unknown id). Reads only those rows."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        pos = np.searchsorted(self._ids, ids)
        found = pos < len(self._ids)
        found[found] = self._ids[pos[found]] == ids[found]
        if not found.all():
            raise KeyError(int(ids[~found][0]))
        self._gather(self._where[pos], out)
        return out

    def advise_random(self) -> int:
        """Tell the kernel the saved vectors are read a few rows at a time, in no order (a re-rank's
        candidates): no read-ahead, so reading one 960-byte row faults in its page, not the ~128 KB
        around it. For readers only: a merge reads the files front to back. Returns the mappings advised.

        From then on a gather of at most PREFETCH_ROWS rows (a re-rank's candidates, by-id vectors)
        reads them with ``pread`` (:func:`pread_rows`), not through the mapping: the pages stay in
        the kernel's page cache, shared and reclaimable, instead of being mapped into this process,
        so a server's resident set does not grow with the rows its queries have touched (through
        the mapping, 2.1 GB after 1,000 queries at 10M; docs/benchmarks.md, "The search index on disk")."""
        self._random = True
        return sum(advise_random(s.vectors) for s in self.segments)

    def _descriptor(self, k: int) -> int:
        """A read-only descriptor of segment `k`'s vectors file, opened once (closed by :meth:`close`)."""
        name = self.segments[k].name
        fd = self._files.get(name)
        if fd is None:
            fd = self._files[name] = os.open(self.segments[k].vectors.filename, os.O_RDONLY)
        return fd

    def close(self) -> None:
        """Close the descriptors :meth:`get` opened for ``pread`` (the mappings close with the arrays)."""
        files, self._files = self._files, {}
        for fd in files.values():
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to do
            self.close()

    def vector_blocks(self, ids: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, their vectors), at most `size` at a time, for `ids` stored, unique and ascending. A block
        whose rows lie one after another in one segment (a broad filter over a merged store) is a
        read-only view of the memory-mapped file, not a copy: scoring it reads each vector once."""
        where = self._where[np.searchsorted(self._ids, ids)]
        seg = np.searchsorted(self._offsets, where, side="right") - 1
        cuts = np.union1d(np.arange(0, len(ids), size), np.flatnonzero(np.diff(seg)) + 1)  # never across segments
        for start, end in zip(cuts, [*cuts[1:], len(ids)], strict=True):
            w, k = where[start:end], int(seg[start])
            if k < len(self.segments) and w[-1] - w[0] == len(w) - 1 and (np.diff(w) == 1).all():
                first = int(w[0] - self._offsets[k])
                if self._random:  # a scan: read the run ahead, as the kernel would without the advice
                    prefetch_rows(self.segments[k].vectors, np.array([first, first + len(w) - 1]), span=True)
                yield ids[start:end], self.segments[k].vectors[first : first + len(w)]
            else:
                out = np.empty((len(w), self.dim), dtype=np.float32)
                self._gather(w, out)
                yield ids[start:end], out

    def _gather(self, where: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` with the vectors at global rows `where`."""
        if not len(where):
            return
        seg = np.searchsorted(self._offsets, where, side="right") - 1  # len(segments) for the unsaved
        first, last = int(seg.min()), int(seg.max())
        for k in range(first, last + 1):
            # Rows of one segment (the common case: a merged base) are taken straight into `out`: one pass,
            # where a boolean mask costs a gather and a scatter (7x slower for 32k rows, measured).
            pos = slice(None) if first == last else np.flatnonzero(seg == k)
            rows = where[pos]
            if not len(rows):
                continue
            if k < len(self.segments):
                rows = rows - self._offsets[k]
                vectors = self.segments[k].vectors
                if self._random and len(rows) <= PREFETCH_ROWS and getattr(vectors, "filename", None):
                    if first == last:
                        pread_rows(vectors, rows, out, self._descriptor(k))
                    else:
                        out[pos] = pread_rows(vectors, rows, None, self._descriptor(k))
                    continue
                if self._random:
                    prefetch_rows(vectors, rows)
                source = np.asarray(vectors)
            else:
                source, rows = self._pending_vectors(), rows - self._saved_rows
            if first == last:
                np.take(source, rows, axis=0, out=out)
            else:
                out[pos] = source[rows]

    def _pending_vectors(self) -> np.ndarray:
        if self._pending_matrix is None:
            self._pending_matrix = (
                np.concatenate(self._pending) if self._pending else np.empty((0, self.dim), np.float32)
            )
            self._pending = [self._pending_matrix]
        return self._pending_matrix

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything in the store, ids ascending (a copy: 4*dim bytes a vector)."""
        return self.ids(), self.get(self._ids)

    @property
    def index(self) -> faiss.Index:
        """An exact FAISS index (IndexIDMap2 over IndexFlatIP) of every vector, built in memory on first
        use after a change: what flat search, neighbour tables and recall measurements search."""
        if self._index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            for start in range(0, len(self._ids), _CHUNK_ROWS * 4):
                ids = self._ids[start : start + _CHUNK_ROWS * 4]
                index.add_with_ids(self.get(ids), ids)
            self._index = index
        return self._index

    @property
    def index_built(self) -> bool:
        """Whether :attr:`index` (the in-memory flat copy) is built and current."""
        return self._index is not None

    def write_flat(self, path: str | os.PathLike) -> None:
        """Write :attr:`index` as one FAISS file (what a server opens as the exact store)."""
        atomic_write_via(Path(path), lambda tmp: faiss.write_index(self.index, tmp))

    # ---- checkpoints and merges

    def save(self, *, seq: int = 0) -> bool:
        """Checkpoint: write the vectors added and the ids removed since the last save as one new
        segment (holding save number `seq`), then the list naming it. Returns False if there was
        nothing to write."""
        self._check_writable()
        new = self._where >= self._saved_rows
        tombs = np.unique(np.concatenate(self._tombstones)) if self._tombstones else np.empty(0, np.int64)
        if not new.any() and not len(tombs) and not self._dirty:
            return False
        names = [s.name for s in self.segments]
        if new.any() or len(tombs):
            pos = np.flatnonzero(new)
            pos = pos[np.argsort(self._where[pos])]  # in the order they were added
            rows = self._where[pos] - self._saved_rows
            name = next_name(self.directory)
            chunks = row_chunks(self._pending_vectors(), rows)
            write_segment(self.directory, name, self.dim, self._ids[pos], chunks, tombs, (seq, seq), "segment")
            segment = read_segment(self.directory, name, self.dim, verify=False)
            names.append(name)
        self._write_list(names)
        kill_point("segment:list")
        if new.any() or len(tombs):
            self._where[pos] = self._saved_rows + np.arange(len(pos))
            self.segments.append(segment)
            self._offsets = np.append(self._offsets, self._offsets[-1] + len(pos))
        self._pending, self._pending_rows, self._pending_matrix, self._tombstones = [], 0, None, []
        self._collect_garbage(names)
        return True

    def dead_rows(self) -> int:
        """Rows in the segments that no id reads any more (reclaimed by a merge)."""
        return self._saved_rows - int((self._where < self._saved_rows).sum())

    def merge_if_due(self) -> bool:
        """Merge what :func:`plan_merge` says is due; returns whether it merged."""
        live = int((self._where < self._saved_rows).sum())
        start = plan_merge([len(s.ids) for s in self.segments], live)
        return start is not None and self.merge(start)

    def merge(self, start: int = 0) -> bool:
        """Copy the live rows of segments ``start:`` (all, by default: on demand) into one new segment,
        switch the list to it, then delete the inputs. Kill points ``merge:ids`` ... ``merge:header``,
        ``merge:list``, ``merge:retired``. Returns False if there was nothing to merge."""
        self._check_writable()
        inputs = self.segments[start:]
        base, end = int(self._offsets[start]), self._saved_rows
        pos = np.flatnonzero((self._where >= base) & (self._where < end))
        if not inputs or (len(inputs) == 1 and len(pos) == end - base and (start or not len(inputs[0].tombstones))):
            return False  # one segment, nothing in it to drop
        pos = pos[np.argsort(self._where[pos])]
        where = self._where[pos]
        seg_of = np.searchsorted(self._offsets, where, side="right") - 1

        def chunks() -> Iterator[np.ndarray]:
            for k in range(start, len(self.segments)):
                yield from row_chunks(self.segments[k].vectors, where[seg_of == k] - self._offsets[k])

        older = self.segments[:start]
        tombs = np.empty(0, np.int64)
        if older:  # tombstones still needed: those of ids stored in the older segments
            tombs = np.unique(np.concatenate([np.asarray(s.tombstones) for s in inputs]))
            tombs = tombs[np.isin(tombs, np.concatenate([np.asarray(s.ids) for s in older]))]
        seq = (min(s.seq_min for s in inputs), max(s.seq_max for s in inputs))
        name = next_name(self.directory)
        write_segment(self.directory, name, self.dim, self._ids[pos], chunks(), tombs, seq, "merge")
        merged = read_segment(self.directory, name, self.dim, verify=False)
        self._write_list([s.name for s in older] + [name])
        kill_point("merge:list")
        shift = base + np.arange(len(pos))
        self._where[self._where >= end] += base + len(pos) - end  # unsaved rows move with the saved total
        self._where[pos] = shift
        self.segments = [*older, merged]
        self._offsets = np.append(self._offsets[: start + 1], base + len(pos))
        self._index = None
        self._collect_garbage([s.name for s in self.segments])
        kill_point("merge:retired")
        log.info("merged %d segments into %s (%d rows)", len(inputs), name, len(pos))
        return True

    # ---- files

    def _write_list(self, names: list[str]) -> None:
        write_list(self.directory, self.dim, names)
        self._dirty = False

    def _collect_garbage(self, live: list[str]) -> None:
        """Remove the files of segments the list does not name: inputs of a finished merge, and what
        a killed checkpoint or merge left. Only the writer (which holds the index lock) calls this."""
        keep = {SEGMENT_LIST} | {f"{n}.{p}.npy" for n in live for p in PARTS} | {f"{n}.json" for n in live}
        removed = False
        for path in self.directory.iterdir():
            if path.is_file() and path.name not in keep:
                path.unlink()
                removed = True
        if removed:
            fsync_dir(self.directory)

    def _check_writable(self) -> None:
        if not self.writable:
            raise SegmentError(f"{self.directory}: opened read-only")
