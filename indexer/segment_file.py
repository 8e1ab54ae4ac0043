"""One segment of the vector store on disk: its four files, how they are written and checked.

See indexer/segments.py for what segments are and how the store uses them. A segment ``NAME`` is
``NAME.ids.npy``, ``NAME.vectors.npy``, ``NAME.tombstones.npy`` (plain ``.npy``, so readers can
memory-map them) and ``NAME.json``, the header, written last: the segment's commit point.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.atomic import atomic_write_json
from encoder.errors import LookalikeError

from .generations import kill_point
from .layout import SEGMENT_LIST

FORMAT = 1
PARTS = ("ids", "vectors", "tombstones")


class SegmentError(LookalikeError):
    """A segment is damaged (bad checksum, truncated, missing) or the store is misused."""


@dataclass(frozen=True)
class Segment:
    name: str
    ids: np.ndarray  # (n,) int64, memory-mapped
    vectors: np.ndarray  # (n, dim) float32, memory-mapped
    tombstones: np.ndarray  # (t,) int64
    seq_min: int
    seq_max: int


def has_segments(directory: Path) -> bool:
    """Whether `directory` holds a segment store (its list has been written once)."""
    return (directory / SEGMENT_LIST).exists()


def segment_files(directory: Path) -> list[str]:
    """The files of the live segments in `directory` and the list, as names relative to it (what a
    generation links); [] if there is no store there."""
    try:
        names = json.loads((directory / SEGMENT_LIST).read_text())["segments"]
    except FileNotFoundError:
        return []
    return [f"{n}.{p}.npy" for n in names for p in PARTS] + [f"{n}.json" for n in names] + [SEGMENT_LIST]


def write_list(directory: Path, dim: int, names: list[str]) -> None:
    """Write ``list.json`` naming the live segments `names`, oldest first (atomically): the commit
    point of a checkpoint, a merge or a migration."""
    atomic_write_json(directory / SEGMENT_LIST, {"format": FORMAT, "dim": dim, "segments": names})


def next_name(directory: Path) -> str:
    """A segment name no file in `directory` uses yet (numbers only grow)."""
    numbers = [int(p.name.split(".")[0]) for p in directory.iterdir() if p.name.split(".")[0].isdigit()]
    return f"{max(numbers, default=0) + 1:08d}"


def _write_array(path: Path, dtype: np.dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> dict:
    """Stream `chunks` (row blocks, in order) into a ``.npy`` file and fsync it. Returns the
    header's record of it: its byte size and the CRC-32 of its data."""
    crc, rows = 0, 0
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=dtype)
            fh.write(memoryview(block).cast("B"))
            crc = zlib.crc32(block, crc)
            rows += len(block)
        fh.flush()
        os.fsync(fh.fileno())
    if rows != shape[0]:
        raise ValueError(f"{path.name}: wrote {rows} rows, expected {shape[0]}")
    return {"bytes": path.stat().st_size, "crc32": crc}


def write_segment(
    directory: Path,
    name: str,
    dim: int,
    ids: np.ndarray,
    vector_chunks: Iterable[np.ndarray],
    tombstones: np.ndarray,
    seq: tuple[int, int],
    point: str,
) -> None:
    """Write segment `name`: the arrays, then its header (the commit point). `point`: the prefix
    of its kill points (KILL_AT_ENV): ``POINT:ids``, ``:vectors``, ``:tombstones``, ``:header``."""
    files = {"ids": _write_array(directory / f"{name}.ids.npy", np.dtype(np.int64), (len(ids),), [ids])}
    kill_point(f"{point}:ids")
    files["vectors"] = _write_array(
        directory / f"{name}.vectors.npy", np.dtype(np.float32), (len(ids), dim), vector_chunks
    )
    kill_point(f"{point}:vectors")
    files["tombstones"] = _write_array(
        directory / f"{name}.tombstones.npy", np.dtype(np.int64), (len(tombstones),), [tombstones]
    )
    kill_point(f"{point}:tombstones")
    header = {
        "format": FORMAT,
        "dim": dim,
        "rows": len(ids),
        "tombstones": len(tombstones),
        "seq_min": int(seq[0]),
        "seq_max": int(seq[1]),
        "files": files,
    }
    atomic_write_json(directory / f"{name}.json", header)
    kill_point(f"{point}:header")


def read_segment(directory: Path, name: str, dim: int, *, verify: bool) -> Segment:
    """Open segment `name` memory-mapped; `verify`: also check every array's CRC-32 (reads it
    whole). SegmentError if it is damaged."""
    try:
        header = json.loads((directory / f"{name}.json").read_text())
    except (OSError, ValueError) as exc:
        raise SegmentError(f"segment {name}: header unreadable ({exc})") from None
    if header.get("format") != FORMAT or header.get("dim") != dim:
        raise SegmentError(f"segment {name}: format {header.get('format')}, dim {header.get('dim')} (want {dim})")
    arrays = {}
    for part in PARTS:
        path = directory / f"{name}.{part}.npy"
        want = header["files"][part]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise SegmentError(f"segment {name}: {path.name} is missing") from None
        if size != want["bytes"]:
            raise SegmentError(f"segment {name}: {path.name} has {size} bytes, its header says {want['bytes']}")
        try:
            arr = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise SegmentError(f"segment {name}: {path.name} unreadable ({exc})") from None
        if verify and zlib.crc32(np.ascontiguousarray(arr)) != want["crc32"]:
            raise SegmentError(f"segment {name}: {path.name} fails its checksum")
        arrays[part] = arr
    ids, vectors, tombs = arrays["ids"], arrays["vectors"], arrays["tombstones"]
    if ids.dtype != np.int64 or vectors.dtype != np.float32 or vectors.shape != (header["rows"], dim):
        raise SegmentError(f"segment {name}: arrays of unexpected type or shape")
    return Segment(name, ids, vectors, tombs, int(header["seq_min"]), int(header["seq_max"]))


def header_seq_min(directory: Path, name: str, before: list[Segment]) -> int:
    """The oldest save a damaged segment holds: from its header if that is readable, else just
    the newest save of the segments before it (saves never decrease along the list; a run killed
    before the catalog recorded its save writes the same number again)."""
    try:
        return int(json.loads((directory / f"{name}.json").read_text())["seq_min"])
    except (OSError, ValueError, KeyError, TypeError):
        return before[-1].seq_max if before else 0
