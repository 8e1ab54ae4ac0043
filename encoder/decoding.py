"""Decode many image files in parallel worker processes.

JPEG/PNG decoding is CPU-bound and holds the GIL, so threads do not help;
worker processes do. Workers are started with ``spawn`` so they never inherit
a parent's torch/OpenMP thread state (forking a process that has started
OpenMP threads can deadlock), and they import only Pillow and numpy.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import DEFAULT_MAX_PIXELS, ImageInfo, ImageLoadError, load_image_with_info


@dataclass
class Decoded:
    """One file's outcome: pixels and header info, or the reason it failed."""

    index: int
    path: str
    pixels: np.ndarray | None = None  # (S, S, 3) uint8
    info: ImageInfo | None = None
    error: str | None = None


def _decode_one(args: tuple[int, str, int, int]) -> Decoded:
    index, path, size, max_pixels = args
    try:
        pixels, info = load_image_with_info(path, size, max_pixels=max_pixels)
        return Decoded(index, path, pixels, info)
    except ImageLoadError as exc:
        return Decoded(index, path, error=exc.reason)
    except Exception as exc:  # a worker must report, never die: one file never stops a run
        return Decoded(index, path, error=f"unexpected decoder failure: {type(exc).__name__}: {exc}")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 32))


def decode_many(
    paths: Iterable[str | os.PathLike],
    size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunksize: int = 8,
    prefetch: int = 1024,
) -> Iterator[Decoded]:
    """Yield a :class:`Decoded` per path, in input order, decoding in `workers` processes.

    ``workers=None`` uses one process per core; ``workers=0`` decodes in this
    process (no start-up cost: best for a handful of files).
    """
    jobs = ((i, os.fspath(p), size, max_pixels) for i, p in enumerate(paths))
    workers = default_workers() if workers is None else max(0, workers)
    if workers == 0:
        for job in jobs:
            yield _decode_one(job)
        return
    # Pool.imap reads its task iterator eagerly in a feeder thread; a semaphore released
    # as results are consumed bounds how many decoded images can pile up in memory.
    in_flight = threading.BoundedSemaphore(max(prefetch, chunksize * workers * 2))

    def throttled():
        for job in jobs:
            in_flight.acquire()
            yield job

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for result in pool.imap(_decode_one, throttled(), chunksize=chunksize):
            in_flight.release()
            yield result


def decode_to_array(
    paths: list[Path],
    size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Decode `paths` into one (N, S, S, 3) uint8 array; returns (pixels, decoded paths, failures)."""
    if workers is None:
        workers = 0 if len(paths) < 64 else default_workers()
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    ok: list[Path] = []
    failed: list[tuple[Path, str]] = []
    for d in decode_many(paths, size, workers=workers, max_pixels=max_pixels):
        if d.pixels is None:
            failed.append((paths[d.index], d.error or "unknown error"))
        else:
            out[len(ok)] = d.pixels
            ok.append(paths[d.index])
    return out[: len(ok)], ok, failed
