"""A shard's result as one file a worker writes and the driver ingests (issue 17, item 1).

When indexing is spread over machines (indexer/ray_embed.py), each embedding worker writes
what became of its shard of files into the index's ``shards/`` folder, and hands the driver
only the file's name; the driver reads it, commits catalog rows and vectors (still the one
writer), and removes the file once a store save holds its vectors. A driver that dies
mid-run therefore loses no finished work: the next run adopts what is left there
(:func:`indexer.embed.adopt_spooled`) for every file that is still as the worker saw it.

One file a shard, ``shard-<digest>.safetensors``: the vectors as a tensor, and in the
header's metadata, as JSON, the model's id, the worker, and one entry per file (path,
size and mtime as the worker found them, content hash, error, width, height, format).
safetensors, not a pickle: the driver reads files other machines wrote. The name comes
from the shard's paths, so a retried shard replaces its own file; each write is atomic
(a temporary file renamed into place), so a reader sees a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from encoder.atomic import atomic_write_bytes
from encoder.errors import LookalikeError

FORMAT = 1
SUFFIX = ".safetensors"
PREFIX = "shard-"


class ShardFileError(LookalikeError):
    """A shard file is damaged, truncated or of another format."""


@dataclass(frozen=True)
class SpooledFile:
    """One file's entry in a shard file."""

    index: int  # its position in the to-decode list of the run that wrote it
    path: str  # as the driver gave it (absolute)
    size: int  # bytes, when the worker read it (-1: could not stat it)
    mtime_ns: int
    content_hash: str | None
    error: str | None  # None: decoded, and has a vector
    width: int
    height: int
    format: str | None
    cannot_read: bool = False  # the error says the worker could not find or open the file
    decoder: str = ""  # the process that decoded it, "host/node:pid"


@dataclass(frozen=True)
class ShardFile:
    name: str
    model_id: str
    worker: str
    files: list[SpooledFile]
    vectors: np.ndarray  # (files without an error, D) float32, in the order of `files`


def shard_name(paths: list[str]) -> str:
    """The file name for a shard of `paths`: the same paths always give the same name."""
    digest = hashlib.blake2b("\n".join(paths).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    return f"{PREFIX}{digest}{SUFFIX}"


def write_shard_file(directory: Path, model_id: str, worker: str, files: list[SpooledFile], vectors: np.ndarray) -> str:
    """Write one shard's result into `directory` (atomically); returns the file's name."""
    from safetensors.numpy import save

    good = sum(f.error is None for f in files)
    if vectors.ndim != 2 or len(vectors) != good:
        raise ValueError(f"{len(vectors)} vectors for {good} decoded files")
    header = {
        "format": FORMAT,
        "model_id": model_id,
        "worker": worker,
        "files": [list(astuple(f)) for f in files],  # in field order: read back by SpooledFile(*entry)
    }
    name = shard_name([f.path for f in files])
    data = save({"vectors": np.ascontiguousarray(vectors, np.float32)}, metadata={"lookalike": json.dumps(header)})
    atomic_write_bytes(directory / name, data)
    return name


def read_shard_file(directory: Path, name: str) -> ShardFile:
    """Read a shard file; :class:`ShardFileError` if it is damaged or not one."""
    from safetensors import safe_open

    path = directory / name
    try:
        with safe_open(str(path), framework="np") as fh:
            header = json.loads((fh.metadata() or {})["lookalike"])
            vectors = fh.get_tensor("vectors")
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')}, expected {FORMAT}")
        files = [SpooledFile(*entry) for entry in header["files"]]
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors and json raise their own types: any of them is a damaged file
        raise ShardFileError(f"{path}: not a readable shard file ({exc})") from None
    good = sum(f.error is None for f in files)
    if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != good:
        raise ShardFileError(f"{path}: {vectors.shape} {vectors.dtype} vectors for {good} decoded files")
    return ShardFile(name, str(header["model_id"]), str(header["worker"]), files, vectors)


def spooled_names(directory: Path) -> list[str]:
    """The shard files in `directory` (none if it does not exist), in name order."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.glob(f"{PREFIX}*{SUFFIX}"))  # temporaries start with "."
