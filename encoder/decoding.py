"""Decode many image files in parallel, in threads or in worker processes.

Pillow releases the GIL while it decodes, converts and resizes, so threads
scale: on the 2-core development machine two threads decode 1.7x as fast as
one (docs/benchmarks.md, "Indexing"), with no start-up cost and no pickling,
and indexing end to end ran 1.2x faster with them than with one worker
process. What still holds the GIL is the Python around each call (about a
tenth of the time per image), which caps threads somewhere near ten cores'
worth; above `THREAD_MAX_CORES` cores, worker processes are the default.
Processes are started with ``spawn`` so they never inherit a parent's
torch/OpenMP thread state (forking a process that has started OpenMP threads
can deadlock), and they import only Pillow and numpy.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LoadFailure
from .images import DEFAULT_MAX_PIXELS, ImageInfo, ImageLoadError, load_image_with_info


@dataclass
class Decoded:
    """One file's outcome: pixels and header info, or the reason it failed."""

    index: int
    path: str
    pixels: np.ndarray | None = None  # (S, S, 3) uint8
    info: ImageInfo | None = None
    error: str | None = None
    failure: LoadFailure | None = None  # which kind of failure `error` is, when the decoder knows


def _decode_one(args: tuple[int, str, int, int]) -> Decoded:
    index, path, size, max_pixels = args
    try:
        pixels, info = load_image_with_info(path, size, max_pixels=max_pixels)
        return Decoded(index, path, pixels, info)
    except ImageLoadError as exc:
        return Decoded(index, path, error=exc.reason, failure=exc.kind)
    except Exception as exc:  # a worker must report, never die: one file never stops a run
        return Decoded(index, path, error=f"unexpected decoder failure: {type(exc).__name__}: {exc}")


#: Up to this many cores, decoding threads are the default; above, worker processes.
THREAD_MAX_CORES = 8
BACKENDS = ("thread", "process")


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 32))


def default_backend() -> str:
    return "thread" if (os.cpu_count() or 1) <= THREAD_MAX_CORES else "process"


def decode_many(
    paths: Iterable[str | os.PathLike],
    size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str | None = None,
    chunksize: int = 8,
    prefetch: int = 1024,
) -> Iterator[Decoded]:
    """Yield a :class:`Decoded` per path, in input order, decoding with `workers` threads or processes.

    ``workers=None`` uses one per core; ``workers=0`` decodes in the calling
    thread (best for a handful of files). `backend` is "thread" or "process"
    (default: :func:`default_backend`). At most `prefetch` decoded images wait
    for the consumer, so memory stays bounded however slow it is.
    """
    jobs = ((i, os.fspath(p), size, max_pixels) for i, p in enumerate(paths))
    workers = default_workers() if workers is None else max(0, workers)
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoding backend {backend!r}: {', '.join(BACKENDS)}")
    if workers == 0:
        for job in jobs:
            yield _decode_one(job)
        return
    if backend == "thread":
        yield from _decode_in_threads(jobs, workers, max(prefetch, 2 * workers))
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


def decode_batches(
    paths: Iterable[str | os.PathLike],
    size: int,
    batch_size: int,
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str | None = None,
) -> Iterator[list[Decoded]]:
    """:func:`decode_many`, grouped: lists of up to `batch_size` outcomes in input order, the
    last one possibly shorter. The one decode -> batch -> flush loop that indexing, the
    outlier scan and set queries share."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[Decoded] = []
    for d in decode_many(paths, size, workers=workers, max_pixels=max_pixels, backend=backend):
        batch.append(d)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _decode_in_threads(jobs: Iterator[tuple[int, str, int, int]], workers: int, prefetch: int) -> Iterator[Decoded]:
    pending: deque[Future[Decoded]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lookalike-decode")
    try:
        for job in jobs:
            pending.append(pool.submit(_decode_one, job))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # A consumer that stops early (an error, a closed generator) must not wait for
        # the whole queue to be decoded for nothing.
        pool.shutdown(wait=True, cancel_futures=True)


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
