"""Where decoding and embedding run: the distributor interface, and its local implementation.

The walk and the diff against the catalog stay on the driver (the process that
holds the index's lock); what is left to embed is cut into shards of paths. A
:class:`Distributor` turns shards into :class:`ShardResult`s (vectors, image
info and per-file errors, nothing written anywhere), in any order, and the
driver ingests each one (indexer/embed.py): the catalog and the vector store
keep a single writer however many machines embed.

Two implementations: :class:`ThreadDistributor`, this machine's decoding
threads (or processes) feeding the encoder in the driver, the default; and
``indexer.ray_embed.RayDistributor``, Ray Data tasks and actors on a cluster.
A distributor is chosen for a run with :func:`use_distributor` (a context
variable, so ``build_index`` needs no argument for it and a run in another
thread is not affected).
"""

from __future__ import annotations

import contextvars
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from encoder import Encoder
from encoder.decoding import Decoded, decode_many, default_backend, default_workers
from encoder.gpu_decode import decode_many_jpeg, wants_gpu_decode
from encoder.images import ImageInfo


@dataclass(frozen=True)
class Shard:
    """Consecutive entries of a run's to-decode list: ``paths[i]`` is entry ``start + i``."""

    start: int
    paths: list[str]


@dataclass
class ShardResult:
    """What became of some files: one entry a file in `indexes`, `errors` and `infos`, one row of
    `vectors` a file that decoded (in the order of `indexes`). Which worker made it is in `worker`."""

    indexes: list[int]  # positions in the run's to-decode list
    errors: list[str | None]  # None: decoded and embedded
    infos: list[ImageInfo | None]  # header size and format of each file that decoded
    vectors: np.ndarray  # (number of files without an error, D) float32, unit length
    hashes: list[str | None] | None = None  # content hashes, when the worker computed them
    worker: str = field(default="local")
    #: The shard file (indexer/shard_file.py) this result was read from, in the run's spool folder:
    #: the driver removes it once a store save holds these vectors. None: it came in memory.
    spool_file: str | None = None

    def __post_init__(self) -> None:
        good = sum(e is None for e in self.errors)
        if not len(self.indexes) == len(self.errors) == len(self.infos) or len(self.vectors) != good:
            raise ValueError(
                f"inconsistent shard result: {len(self.indexes)} indexes, {len(self.errors)} errors, "
                f"{len(self.infos)} infos, {len(self.vectors)} vectors for {good} decoded files"
            )

    @classmethod
    def from_decoded(cls, encoder: Encoder, batch: list[Decoded], indexes: list[int]) -> ShardResult:
        """Embed a batch of decoded files, the files at positions `indexes` of the to-decode list."""
        good = [d for d in batch if d.pixels is not None]
        vectors = (
            encoder.embed_pixels(np.stack([d.pixels for d in good])) if good else np.zeros((0, encoder.dim), np.float32)
        )
        return cls(
            indexes=indexes,
            errors=[None if d.pixels is not None else (d.error or "unknown error") for d in batch],
            infos=[d.info for d in batch],
            vectors=vectors,
        )


class Distributor(Protocol):
    """Decodes and embeds shards of files somewhere; never writes the index."""

    #: A word for messages and benchmarks ("threads", "ray").
    name: str

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        """Yield results covering every file of `shards` exactly once, in any order and grouping.
        `encoder` is the driver's; a remote implementation loads the same model (its directory,
        ``encoder.model_dir``, checked by ``encoder.model_id``) where it runs. `spool`: a folder
        where workers may leave shard files (indexer/shard_file.py) for the driver, each result
        then naming its file in ``spool_file``; an implementation may ignore it."""
        ...


def make_shards(paths: Sequence[str], size: int) -> list[Shard]:
    """Cut `paths` into consecutive shards of `size` (the last one possibly shorter)."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [Shard(s, list(paths[s : s + size])) for s in range(0, len(paths), size)]


class ThreadDistributor:
    """This machine: decoding threads (processes above 8 cores, encoder/decoding.py) feed the
    encoder, one shard at a time in the calling thread, or `embedders` shards side by side
    (:func:`default_embedders`); torch gets the cores the decoders leave.

    With the encoder on CUDA, JPEGs are decoded on the GPU in batches (encoder/gpu_decode.py,
    nvJPEG; threads read the files and decode the other formats with Pillow) unless
    ``LOOKALIKE_GPU_DECODE=0``; `gpu_decode` overrides that setting (True: torchvision's
    decoder on the encoder's device, whichever it is)."""

    name = "threads"

    def __init__(
        self, workers: int | None = None, *, gpu_decode: bool | None = None, embedders: int | None = None
    ) -> None:
        self.workers = workers  # None: indexer.embed.default_decode_workers
        self.gpu_decode = gpu_decode  # None: encoder.gpu_decode.wants_gpu_decode
        self.embedders = embedders  # None: default_embedders

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        # `spool` is not used: results go from this process's memory to the driver, which is this process.
        paths = [p for shard in shards for p in shard.paths]
        gpu = wants_gpu_decode(encoder.device) if self.gpu_decode is None else self.gpu_decode
        if gpu:
            # The reading threads sleep in I/O and Pillow's header parse: one per core, whatever the backend.
            n_workers = self.workers or default_workers()
            decoded = decode_many_jpeg(
                paths, encoder.image_size, device=encoder.device, workers=n_workers, max_pixels=max_pixels
            )
        else:
            n_workers = self.workers if self.workers is not None else default_decode_workers(encoder, len(paths))
            # One decoder stream across every shard, so the decoders never drain at a shard's end.
            decoded = decode_many(paths, encoder.image_size, workers=n_workers, max_pixels=max_pixels)
        # Each shard's decoded files, in order, with their positions in the to-decode list.
        batches = (
            ([next(decoded) for _ in shard.paths], [shard.start + k for k in range(len(shard.paths))])
            for shard in shards
        )
        with cpu_thread_budget(encoder, n_workers):
            embedders = self.embedders or default_embedders(encoder, gpu)
            if embedders == 1:
                for batch, indexes in batches:
                    yield ShardResult.from_decoded(encoder, batch, indexes)
                return
            # Shards embed side by side; results still come out in shard order. At most
            # `embedders` shards are in flight, so memory stays bounded as before.
            with ThreadPoolExecutor(embedders, thread_name_prefix="lookalike-embed") as pool:
                pending: deque[Future[ShardResult]] = deque()
                for batch, indexes in batches:
                    pending.append(pool.submit(ShardResult.from_decoded, encoder, batch, indexes))
                    if len(pending) >= embedders:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()


def default_embedders(encoder: Encoder, gpu_decode: bool) -> int:
    """Threads that embed shards side by side, for a run whose decoders already started.

    Two where torch runs on one thread on a CPU (:func:`cpu_thread_budget`: machines of up to
    3 cores, which decode in threads): a second shard then embeds on the other core while the
    decoders wait on a full queue, instead of one core idling. A single-threaded torch op runs
    in its calling thread and releases the GIL, so two shards really do run at once, and nothing
    spins. Measured on 2 cores, 3,000 JPEGs: 1.10-1.16x end to end (docs/benchmarks.md,
    "Two shards embedding at once"). One elsewhere: more cores give torch more threads of its
    own, and the GPU batches already keep it busy."""
    import torch

    if gpu_decode or encoder.device.type != "cpu" or default_backend() != "thread" or torch.get_num_threads() != 1:
        return 1
    return min(2, os.cpu_count() or 1)


def default_decode_workers(encoder: Encoder, n_files: int) -> int:
    """Decoders for `n_files`. Threads (the default backend on small machines) start for free:
    one per core; torch then gets one thread and the embedding interleaves with decoding
    (measured best on 2 cores). Processes cost a start-up: none for a handful of files,
    else one per core, less the core that embeds when the model runs on the CPU."""
    cores = os.cpu_count() or 1
    if default_backend() == "thread":
        return min(cores, max(1, n_files))
    if n_files < 64:
        return 0
    return max(1, cores - 1) if encoder.device.type == "cpu" else cores


@contextmanager
def cpu_thread_budget(encoder: Encoder, decode_workers: int | None, backend: str | None = None) -> Iterator[None]:
    """On a CPU, give torch only the cores the decoders leave free.

    Torch's intra-op threads (OpenMP, which spin while they wait) and the
    decoders otherwise fight over the same cores; measured on 2 cores, this
    alone doubled end-to-end throughput. Decoding threads sleep in Pillow's C
    code rather than spin, so with them torch keeps half the cores (decoding
    and embedding cost about the same per image on a CPU).
    """
    import torch

    if encoder.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if decode_workers:
        if (backend or default_backend()) == "thread":
            torch.set_num_threads(max(1, cores // 2))
        else:
            torch.set_num_threads(max(1, cores - decode_workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_current: contextvars.ContextVar[Distributor | None] = contextvars.ContextVar("lookalike_distributor", default=None)


@contextmanager
def use_distributor(distributor: Distributor | None) -> Iterator[None]:
    """Index with `distributor` inside this block (None: the local threads)."""
    token = _current.set(distributor)
    try:
        yield
    finally:
        _current.reset(token)


def current_distributor(workers: int | None = None) -> Distributor:
    """The distributor chosen by :func:`use_distributor`, else this machine's threads."""
    return _current.get() or ThreadDistributor(workers)
