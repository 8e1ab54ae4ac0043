"""Decoding and embedding on a Ray cluster (``pip install 'lookalike[ray]'``;
``lookalike index FOLDER --ray [--ray-address ADDRESS]``).

The pipeline is Ray Data's: the driver's paths (``from_items``, one block a
shard) -> decoding with lookalike's own decoder in CPU tasks (EXIF, modes,
letterboxing and the pixel limit exactly as on one machine; each file also
stat'ed and hashed there) -> embedding in a pool of actors that each load the
model once (one GPU each where the cluster has GPUs, one CPU each otherwise)
and write each batch's result as a shard file in the index's spool folder
(indexer/shard_file.py), handing back only its name -> the driver, which reads
and ingests each file (indexer/embed.py): still one writer. The vectors do not
travel back through Ray's object store, and a driver that dies leaves them on
disk for the next run to adopt. Ray Data's streaming executor gives the
backpressure; tasks whose worker died are retried and killed actors restarted
(their batches retried), Ray Data's defaults; the driver drops a file it was
already given and refuses to finish with one missing, so a retry never indexes
a file twice or loses one.

Every node reads the images and the model directory at the driver's paths, and
writes shard files into the index directory: both must be on a file system
every node mounts at the same place (and lookalike installed on every node). A
node that cannot read a file the driver can, or cannot write its shard file,
stops the run with a one-line error naming the node and the path.

``ray`` is imported only here, inside the calls, so lookalike works without it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoder import Encoder
from encoder.decoding import decode_many
from encoder.errors import LoadFailure
from encoder.images import ImageInfo

from .catalog import content_hash
from .distribute import Shard, ShardResult
from .index_model import IndexBuildError
from .shard_file import SpooledFile, read_shard_file, write_shard_file

log = logging.getLogger(__name__)

INSTALL_HINT = "indexing on Ray needs the ray extra: pip install 'lookalike[ray]'"
#: Messages a worker means for the user carry this prefix; the driver shows the line after it alone.
NODE_ERROR = "lookalike-node-error: "
#: Failures that mean "this node cannot see the file", not "the file is not a good image".
_CANNOT_READ = (LoadFailure.NOT_FOUND, LoadFailure.UNREADABLE)


#: Memory an embedding actor reserves (Ray's `memory` resource): the model, a batch in and out.
ACTOR_MEMORY = 512 * 2**20


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise IndexBuildError(INSTALL_HINT) from None
    return ray


def _node() -> str:
    """This worker's node: host name and the start of Ray's node id (hosts can share a name)."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def decode_block(batch: dict[str, np.ndarray], size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """A Ray Data task: decode a block of paths in this process, as indexing on one machine does.
    Each file is also stat'ed and hashed here, before it is decoded: the driver records the hash
    and the size and mtime of the bytes that made the vector."""
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    pixels = np.zeros((n, size, size, 3), np.uint8)
    error = np.full(n, "", dtype=object)
    cannot_read = np.zeros(n, bool)
    width, height = np.zeros(n, np.int64), np.zeros(n, np.int64)
    fmt = np.full(n, "", dtype=object)
    digest = np.full(n, "", dtype=object)
    fsize, mtime = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for k, path in enumerate(paths):
        try:
            st = os.stat(path)
            fsize[k], mtime[k] = st.st_size, st.st_mtime_ns
            digest[k] = content_hash(Path(path))
        except OSError:
            pass  # the decoder says why, in its own words
    for d in decode_many(paths, size, workers=0, max_pixels=max_pixels):
        if d.pixels is None:
            error[d.index] = d.error or "unknown error"
            cannot_read[d.index] = d.failure in _CANNOT_READ
            continue
        pixels[d.index] = d.pixels
        width[d.index], height[d.index] = d.info.width, d.info.height
        fmt[d.index] = d.info.format or ""
    node = _node()
    return {
        "index": np.asarray(batch["index"], np.int64),
        "path": np.asarray(paths, dtype=object),
        "pixels": pixels,  # (N, S, S, 3) uint8; zeros where `error` is set
        "error": error,
        "cannot_read": cannot_read,
        "node": np.full(n, node, dtype=object),
        "decoder": np.full(n, f"{node}:{os.getpid()}", dtype=object),
        "width": width,
        "height": height,
        "format": fmt,
        "hash": digest,
        "size": fsize,
        "mtime_ns": mtime,
    }


class Embedder:
    """A Ray Data actor: loads the model once from the shared model directory, then embeds batches.
    With a `spool` folder, each batch's result is written there as a shard file
    (indexer/shard_file.py) and only its name goes back to the driver."""

    def __init__(self, model_dir: str, model_id: str, device: str, threads: int, spool: str | None = None) -> None:
        import torch

        node = _node()
        try:
            self.encoder = Encoder(model_dir, device)
        except Exception as exc:  # one line for the user: which node, which directory, why
            raise RuntimeError(f"{NODE_ERROR}node {node} cannot load the model at {model_dir}: {exc}") from None
        if self.encoder.model_id != model_id:
            raise RuntimeError(
                f"{NODE_ERROR}node {node} reads another model at {model_dir} (id {self.encoder.model_id}, "
                f"the driver's is {model_id}): every node must see the same files"
            )
        if self.encoder.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        self.node = node
        self.worker = f"{node}:{os.getpid()}"
        self.spool = Path(spool) if spool else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], bool)
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.embed_pixels(np.ascontiguousarray(batch["pixels"][ok]))
        if self.spool is not None:
            return {"spool_file": np.array([self._write(batch, vectors[ok])], dtype=object)}
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = vectors
        out["worker"] = np.full(len(ok), self.worker, dtype=object)
        return out

    def _write(self, batch: dict[str, np.ndarray], vectors: np.ndarray) -> str:
        files = [
            SpooledFile(
                index=int(batch["index"][k]),
                path=str(batch["path"][k]),
                size=int(batch["size"][k]),
                mtime_ns=int(batch["mtime_ns"][k]),
                content_hash=str(batch["hash"][k]) or None,
                error=str(batch["error"][k]) or None,
                width=int(batch["width"][k]),
                height=int(batch["height"][k]),
                format=str(batch["format"][k]) or None,
                cannot_read=bool(batch["cannot_read"][k]),
                decoder=str(batch["decoder"][k]),
            )
            for k in range(len(batch["index"]))
        ]
        try:
            return write_shard_file(self.spool, self.encoder.model_id, self.worker, files, vectors)
        except OSError as exc:
            raise RuntimeError(
                f"{NODE_ERROR}node {self.node} cannot write shard files to {self.spool} ({exc.strerror or exc}): "
                "with --ray, every node must see the index directory at the same path, writable"
            ) from None


def _rows_from_file(spool: Path, name: str) -> dict[str, np.ndarray]:
    """A shard file, read on the driver, as the columns an in-memory result has."""
    shard = read_shard_file(spool, name)
    files = shard.files
    ok = np.array([f.error is None for f in files], bool)
    vectors = np.zeros((len(files), shard.vectors.shape[1]), np.float32)
    vectors[ok] = shard.vectors
    return {
        "index": np.array([f.index for f in files], np.int64),
        "path": np.array([f.path for f in files], dtype=object),
        "error": np.array([f.error or "" for f in files], dtype=object),
        "cannot_read": np.array([f.cannot_read for f in files], bool),
        "node": np.array([f.decoder.rsplit(":", 1)[0] for f in files], dtype=object),
        "decoder": np.array([f.decoder for f in files], dtype=object),
        "width": np.array([f.width for f in files], np.int64),
        "height": np.array([f.height for f in files], np.int64),
        "format": np.array([f.format or "" for f in files], dtype=object),
        "hash": np.array([f.content_hash or "" for f in files], dtype=object),
        "vector": vectors,
        "worker": np.full(len(files), shard.worker, dtype=object),
        "spool_file": np.full(len(files), name, dtype=object),
    }


class RayDistributor:
    """Decode and embed on a Ray cluster: `address` "auto" (the cluster this machine is part of),
    ``ray://HOST:PORT`` or ``HOST:PORT``; None: the Ray this process is already connected to, else
    the cluster of $RAY_ADDRESS, else a Ray started on this machine for the run (and stopped after).
    `actors`: embedding actors [default: one per GPU; on a CPU cluster, one per two CPUs, leaving
    the rest to decoding]."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        actors: int | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
        ordered: bool = True,
    ) -> None:
        self.address = address
        #: Results in shard order, so each file gets the catalog id a local run gives it; False lets
        #: them come as they finish (no waiting behind a slow shard; ids then differ run to run).
        self.ordered = ordered
        self.actors = actors
        self.num_cpus = num_cpus  # for a Ray started here
        self.object_store_memory = object_store_memory  # for a Ray started here, bytes
        #: Seconds of the last run: "connect" (ray.init, or 0 when already connected), "first_result".
        self.timings: dict[str, float] = {}
        #: Results the last run dropped because the driver already had their files (retries).
        self.duplicates = 0
        #: Shard files the last run read its results from (see indexer/shard_file.py).
        self.spooled = 0
        #: The processes ("host/node:pid") that decoded and that embedded in the last run.
        self.decoders: set[str] = set()
        self.embedders: set[str] = set()

    def embed(
        self, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, spool: Path | None = None
    ) -> Iterator[ShardResult]:
        ray = import_ray()
        t0 = time.perf_counter()
        started = self._connect(ray)
        self.timings = {"connect": time.perf_counter() - t0}
        if spool is not None:
            spool.mkdir(parents=True, exist_ok=True)
        try:
            yield from self._run(ray, encoder, shards, max_pixels, t0, spool)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Connect to (or start) Ray; True if this call started it (and the run should stop it)."""
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        address = self.address or os.environ.get("RAY_ADDRESS")  # what ray.init itself would take
        if address is None:
            kwargs.update(include_dashboard=False, num_cpus=self.num_cpus, object_store_memory=self.object_store_memory)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise IndexBuildError(f"cannot connect to Ray at {address}: {exc}") from None
        return True

    def _run(
        self, ray: Any, encoder: Encoder, shards: Sequence[Shard], max_pixels: int, t0: float, spool: Path | None
    ) -> Iterator[ShardResult]:
        from ray.data import DataContext

        items = [{"index": shard.start + k, "path": p} for shard in shards for k, p in enumerate(shard.paths)]
        if not items:
            return
        shard_size = max(len(s.paths) for s in shards)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if gpus:
            n_actors, actor_resources, device = self.actors or gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda"
        else:
            n_actors, actor_resources, device = self.actors or max(1, cpus // 2), {"num_cpus": 1}, "cpu"
        # A reservation for the model and a batch. Resources that differ from the decoding tasks' also
        # keep Ray Data from fusing those tasks into the actors, where decoding would run one process per
        # actor (on a CPU cluster, the other half of the CPUs idle) instead of on every free CPU.
        actor_resources["memory"] = ACTOR_MEMORY
        ctx = DataContext.get_current()
        saved = ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order
        ctx.enable_progress_bars = ctx.print_on_execution_start = False  # the driver shows its own bar
        # Results in shard order, whichever worker finishes first: the catalog then gives each file the
        # id a run on one machine gives it. Ray Data holds finished blocks back to keep the order; they
        # are small (the vectors are in shard files, the blocks only name them).
        ctx.execution_options.preserve_order = self.ordered
        try:
            ds = ray.data.from_items(items, override_num_blocks=len(shards))
            ds = ds.map_batches(
                decode_block,
                fn_kwargs={"size": encoder.image_size, "max_pixels": max_pixels},
                batch_size=None,  # a whole block (a shard) per task
                batch_format="numpy",
                num_cpus=1,
                # Retries: Ray Data's own defaults, which retry a task whose worker died and restart a
                # dead actor, retrying its batches (max_retries, max_restarts, max_task_retries = -1).
                # A bad file never fails a task: the decoder reports it as that file's error.
            )
            ds = ds.map_batches(
                Embedder,
                fn_constructor_kwargs={
                    # The directory, not the model: each actor reads the same safetensors + JSON files.
                    "model_dir": str(encoder.model_dir.resolve()),
                    "model_id": encoder.model_id,
                    "device": device,
                    "threads": int(actor_resources["num_cpus"]),
                    # The vectors go back as a file there, not through the object store (see _collect).
                    "spool": str(spool) if spool is not None else None,
                },
                batch_size=shard_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=n_actors),
                **actor_resources,
            )
            yield from self._collect(ds, len(items), t0, spool)
        except IndexBuildError:
            raise
        except Exception as exc:
            line = _node_error_line(exc)
            if line is None:
                raise
            raise IndexBuildError(line) from None
        finally:
            ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order = saved

    def _collect(self, ds: Any, expected: int, t0: float, spool: Path | None) -> Iterator[ShardResult]:
        """Turn Ray Data's batches (or the shard files they name) into results: each file once, and
        every file."""
        done: set[int] = set()
        self.duplicates = 0
        self.decoders, self.embedders = set(), set()
        self.spooled = 0
        for batch in self._batches(ds, spool):
            keep = [k for k, i in enumerate(batch["index"].tolist()) if i not in done]
            self.duplicates += len(batch["index"]) - len(keep)
            if not keep:
                continue
            rows = {name: column[keep] for name, column in batch.items()}
            _refuse_unseen_files(rows)
            result = _to_result(rows)
            done.update(result.indexes)
            self.decoders.update(str(d) for d in rows["decoder"])
            self.embedders.update(str(w) for w in rows["worker"])
            if "first_result" not in self.timings:
                self.timings["first_result"] = time.perf_counter() - t0
            yield result
        if len(done) != expected:
            raise IndexBuildError(f"Ray returned {len(done)} of {expected} files; run `lookalike index` again")

    def _batches(self, ds: Any, spool: Path | None) -> Iterator[dict[str, np.ndarray]]:
        """Ray Data's batches as columns; a batch that names shard files stands for their contents."""
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if "spool_file" not in batch:
                yield batch
                continue
            assert spool is not None  # the actors write files only when given the folder
            for name in dict.fromkeys(str(n) for n in batch["spool_file"]):
                self.spooled += 1
                yield _rows_from_file(spool, name)


def _to_result(rows: dict[str, np.ndarray]) -> ShardResult:
    errors = [str(e) or None for e in rows["error"]]
    ok = np.array([e is None for e in errors], bool)
    infos = [
        ImageInfo(int(w), int(h), str(f) or None) if e is None else None
        for w, h, f, e in zip(rows["width"], rows["height"], rows["format"], errors, strict=True)
    ]
    vectors = np.ascontiguousarray(np.asarray(rows["vector"], np.float32)[ok])
    spool_files = {str(n) for n in rows.get("spool_file", ())}
    return ShardResult(
        indexes=[int(i) for i in rows["index"]],
        errors=errors,
        infos=infos,
        vectors=vectors,
        hashes=[str(h) or None for h in rows["hash"]],
        worker=",".join(sorted({str(w) for w in rows["worker"]})),
        spool_file=spool_files.pop() if spool_files else None,
    )


def _refuse_unseen_files(rows: dict[str, np.ndarray]) -> None:
    """A file a node could not find or open, but the driver can: the node does not see the folder
    (not mounted there, other permissions). Stop: indexing it as failed would be wrong. (A file the
    driver cannot read either went away after the walk, and fails as it would on one machine.)"""
    for path, node, flag, error in zip(rows["path"], rows["node"], rows["cannot_read"], rows["error"], strict=True):
        if flag and os.access(str(path), os.R_OK) and os.path.isfile(str(path)):
            raise IndexBuildError(
                f"node {node} cannot read {path} ({error}), which the driver can: with --ray, every node "
                "must see the folder at the same path"
            )


def _node_error_line(exc: BaseException) -> str | None:
    """The one-line message a worker raised for the user, found in Ray's wrapped exception."""
    text = str(exc)
    at = text.find(NODE_ERROR)
    if at < 0:
        return None
    return text[at + len(NODE_ERROR) :].splitlines()[0].strip()
