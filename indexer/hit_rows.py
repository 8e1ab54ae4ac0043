"""What a search hit shows of each indexed image (path, width, height), published with the index.

Every query ends by looking up its hits' catalog rows. With the neighbour table a
by-id query needs nothing else, and that SQLite query became most of its cost
(~0.05 ms for 11 ids, then ~0.02 ms more to turn rows into hits). So ``publish``
also writes these three columns of the indexed images to ``hit_rows.bin``, which
the engine memory-maps: a hit's row is then a binary search in memory.

The rows are those of the generation they are published with, like the vectors:
while a later ``lookalike index`` run is under way, hits keep showing the paths
the served vectors were made from until that run publishes. Everything else the
catalog knows (and the files themselves) is still read from the catalog.

The file is two NumPy ``.npy`` arrays back to back (no pickling, checked on
read): the rows, sorted by id, each with the end offset of its path in the
second array, the UTF-8 bytes of all paths. One file, so that a reader can never
pair rows with the paths of another publish. It is written to a temporary file
and renamed into place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from encoder.atomic import atomic_writer

log = logging.getLogger(__name__)

ROW_DTYPE = np.dtype([("id", "<i8"), ("end", "<i8"), ("width", "<i4"), ("height", "<i4")])
_NONE = -1  # width/height unknown

Row = tuple[str, int | None, int | None]


class HitRows:
    """(path, width, height) by image id, from a published file (memory-mapped) or rows in memory."""

    def __init__(self, rows: np.ndarray, paths: np.ndarray) -> None:
        # Plain ndarray views of the memory maps: indexing an np.memmap costs twice as much.
        self.rows = np.asarray(rows)
        self.paths = np.asarray(paths)
        self._ends = self.rows["end"]
        self.ids = np.ascontiguousarray(rows["id"])  # a binary search in a strided mmap field is ~20x slower
        self._blob = memoryview(self.paths)  # slicing a memoryview is much cheaper than slicing an array

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, int | None, int | None]]) -> HitRows:
        """From (id, path, width, height) tuples in any order."""
        items = sorted(rows)
        encoded = [p.encode("utf-8", "surrogateescape") for _, p, _, _ in items]
        table = np.zeros(len(items), ROW_DTYPE)
        table["id"] = [i for i, _, _, _ in items]
        table["end"] = np.cumsum([len(b) for b in encoded], dtype=np.int64) if items else []
        table["width"] = [_NONE if w is None else w for _, _, w, _ in items]
        table["height"] = [_NONE if h is None else h for _, _, _, h in items]
        return cls(table, np.frombuffer(b"".join(encoded), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, ids: list[int]) -> dict[int, Row]:
        """The rows of those of `ids` that are here (the same shape as ``Catalog.hit_rows``)."""
        if not ids or not len(self.ids):
            return {}
        pos = np.minimum(np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64)), len(self.ids) - 1)
        starts = self._ends[pos - 1].tolist()  # the previous row's end (wraps for row 0: fixed below)
        out: dict[int, Row] = {}
        for i, p, (row_id, end, w, h), start in zip(ids, pos.tolist(), self.rows[pos].tolist(), starts, strict=True):
            if row_id == i:
                out[i] = (
                    str(self._blob[start if p else 0 : end], "utf-8", "surrogateescape"),
                    None if w == _NONE else w,
                    None if h == _NONE else h,
                )
        return out


def write_hit_rows(hit_rows: HitRows, path: str | os.PathLike) -> None:
    """Write atomically (temporary file, fsync, rename)."""
    with atomic_writer(path) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(hit_rows.rows), allow_pickle=False)
        np.lib.format.write_array(fh, np.ascontiguousarray(hit_rows.paths), allow_pickle=False)


def read_hit_rows(path: str | os.PathLike) -> HitRows | None:
    """The rows at `path`, memory-mapped; None if the file is missing or not a valid rows file."""
    try:
        rows, paths = _read_arrays(Path(path), (ROW_DTYPE, np.dtype(np.uint8)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring the hit rows %s: %s", path, exc)
        return None
    ends = rows["end"]
    if len(rows) and (
        np.any(np.diff(rows["id"]) <= 0) or ends[0] < 0 or np.any(np.diff(ends) < 0) or int(ends[-1]) != len(paths)
    ):
        log.warning("ignoring the hit rows %s: ids not increasing or path offsets inconsistent", path)
        return None
    return HitRows(rows, paths)


def _read_arrays(path: Path, dtypes: tuple[np.dtype, ...]) -> list[np.ndarray]:
    """Memory-map consecutive 1-d .npy arrays of the given dtypes from one file."""
    size = path.stat().st_size
    out = []
    with open(path, "rb") as fh:
        for want in dtypes:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if dtype != want or len(shape) != 1 or fortran:
                raise ValueError(f"expected a 1-d array of {want}, found {dtype} {shape}")
            offset = fh.tell()
            nbytes = shape[0] * dtype.itemsize
            if offset + nbytes > size:
                raise ValueError("truncated")
            if nbytes:
                out.append(np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape))
            else:
                out.append(np.empty(shape, dtype))
            fh.seek(offset + nbytes)
        if fh.tell() != size:
            raise ValueError("trailing bytes")
    return out


class LayeredHitRows:
    """A base generation's rows with the rows that differ since laid over them (a delta generation,
    indexer/delta.py): an image added, renamed or changed since the base shows its row from `top`."""

    def __init__(self, base: HitRows, top: HitRows) -> None:
        self.base, self.top = base, top

    def get(self, ids: list[int]) -> dict[int, Row]:
        out = self.base.get(ids)
        out.update(self.top.get(ids))
        return out


def changed_rows(base: HitRows, rows: Iterable[tuple[int, str, int | None, int | None]]) -> HitRows:
    """The rows of `rows` that `base` lacks or holds otherwise (a delta generation's own rows)."""
    items = [tuple(r) for r in rows]
    known = base.get([i for i, _, _, _ in items])
    return HitRows.build(r for r in items if known.get(r[0]) != r[1:])
