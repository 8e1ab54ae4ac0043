"""Reading chosen rows of a memory-mapped ``.npy`` matrix without reading the rest: the page-cache
advice and the ``pread`` path that the vector store's gathers use (indexer/segments.py).

A server's re-rank reads a few hundred scattered rows of a multi-gigabyte file per query. Through
the mapping, each row is a page fault waited for alone and the kernel's read-ahead fills the page
cache with neighbours nobody asked for; with the advice below the reads are issued together and
nothing else is read (docs/benchmarks.md, "The re-rank reads rows with pread").
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .segment_file import SegmentError

__all__ = ["PREFETCH_ROWS", "SPAN_ROWS", "advise_random", "prefetch_rows", "pread_rows"]

#: An advised store prefetches the pages of the rows it gathers (prefetch_rows): up to this many rows
#: (a re-rank's candidates: 80-1,408) page by page; more (a filter's block), if they are dense (on
#: average one in SPAN_ROWS of the rows they span: gaps within one 128 KB read-ahead window, 136
#: rows of 960 bytes), as one span, what the kernel's read-ahead would have read without the advice.
PREFETCH_ROWS = 4_096
SPAN_ROWS = 128


def advise_random(array: np.ndarray) -> bool:
    """``madvise(MADV_RANDOM)`` on the file mapping under `array` (an ``np.load(mmap_mode=...)``
    array or a view of one). False where there is none (an array in RAM, an empty file) or the
    platform lacks it: the advice changes what the kernel reads ahead, never what is read."""
    mapping = getattr(array, "_mmap", None)
    if not isinstance(mapping, mmap.mmap) or not hasattr(mmap, "MADV_RANDOM"):
        return False
    mapping.madvise(mmap.MADV_RANDOM)
    return True


def prefetch_rows(array: np.ndarray, rows: np.ndarray, *, span: bool = False) -> None:
    """``madvise(MADV_WILLNEED)`` on the pages holding `rows` of the memory-mapped 2-d `array`: the
    kernel starts reading them all (the device serves them in parallel) and returns; the copy that
    follows then waits once, not once a row. Measured at 1M vectors from a cold file, 80 rows a
    query: p50 7.7 -> 3.5 ms, p95 26 -> 9.4 ms (docs/pending-16-ondisk.md). Nothing where `array`
    is not a file mapping. A dense set (a broad filter's block: more than PREFETCH_ROWS rows, at
    least 1 in SPAN_ROWS of the rows it spans), or any with `span`, is asked for as the whole span from
    its first row to its last, in one call."""
    mapping = getattr(array, "_mmap", None)
    if not isinstance(mapping, mmap.mmap) or not len(rows) or not hasattr(mmap, "MADV_WILLNEED"):
        return
    start = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY  # where row 0 is in the mapping
    row_bytes = array.strides[0]
    rows = np.unique(rows)
    first = (start + rows * row_bytes) // mmap.PAGESIZE
    last = (start + (rows + 1) * row_bytes - 1) // mmap.PAGESIZE
    if span or (len(rows) > PREFETCH_ROWS and rows[-1] - rows[0] < SPAN_ROWS * len(rows)):
        first, last = first[:1], last[-1:]
    # Rows on neighbouring pages are asked for as one range: one call each, not one a row. The loop
    # is over Python ints (~1 us a call with the pages cached); numpy per range cost ~10 us.
    heads = np.r_[0, np.flatnonzero(first[1:] > last[:-1] + 1) + 1]
    tails = np.r_[heads[1:] - 1, len(first) - 1]
    page = mmap.PAGESIZE
    for a, b in zip((first[heads] * page).tolist(), ((last[tails] + 1) * page).tolist(), strict=True):
        mapping.madvise(mmap.MADV_WILLNEED, a, b - a)


def pread_rows(array: np.ndarray, rows: np.ndarray, out: np.ndarray | None, fd: int) -> np.ndarray:
    """Rows `rows` of the memory-mapped 2-d ``.npy`` `array`, read from its file with ``pread`` on
    `fd` (the mapping is never touched): into `out` when given, else a new array. The rows' byte
    ranges are first handed to ``posix_fadvise(WILLNEED)``, so reads from a cold file are waited
    for together, not one after another (as :func:`prefetch_rows` does for the mapping); consecutive
    rows are read as one range. SegmentError on a short read (a file shorter than its header says)."""
    rows = np.asarray(rows, dtype=np.int64)
    dim = array.shape[1]
    if out is None:
        out = np.empty((len(rows), dim), dtype=array.dtype)
    if not len(rows):
        return out
    row_bytes = dim * array.dtype.itemsize
    base = int(array.offset)  # where row 0 starts in the file: after the .npy header
    order = np.argsort(rows, kind="stable")
    ranked = rows[order]
    heads = np.r_[0, np.flatnonzero(np.diff(ranked) != 1) + 1]
    ends = np.r_[heads[1:], len(ranked)]
    starts = (base + ranked[heads] * row_bytes).tolist()
    sizes = ((ends - heads) * row_bytes).tolist()
    if hasattr(os, "posix_fadvise"):
        for off, size in zip(starts, sizes, strict=True):
            os.posix_fadvise(fd, off, size, os.POSIX_FADV_WILLNEED)
    in_order = out.flags.c_contiguous and bool((order == np.arange(len(order))).all())
    buf = out if in_order else np.empty(out.shape, dtype=out.dtype)
    view = memoryview(buf.reshape(-1).view(np.uint8))
    at = 0
    for off, size in zip(starts, sizes, strict=True):
        if os.preadv(fd, [view[at : at + size]], off) != size:
            raise SegmentError(f"{array.filename}: short read at byte {off} ({size} bytes asked for)")
        at += size
    if buf is not out:
        out[order] = buf
    return out
