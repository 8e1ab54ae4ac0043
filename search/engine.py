"""The search engine: "show me images like this one" over an index directory.

No web framework here: the HTTP API, the CLI and the reports all call this.

An :class:`Engine` holds a *snapshot* (:mod:`search.snapshot`: the search index and the exact
vectors, memory-mapped and read-only, and the model) and swaps in a new one when ``lookalike index``
publishes a new generation of the index: a request already running keeps the
snapshot it started with, so nothing fails mid-flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
from sqlalchemy import func, select

from encoder import DEFAULT_MAX_PIXELS, ImageSource
from indexer import Catalog, ImageRecord, ondisk
from indexer.catalog import STATUS_OK, bytes_hash
from indexer.layout import MANIFEST, THUMBNAILS

from .errors import EngineError, NotFound
from .snapshot import Snapshot, open_current
from .thumbnails import Thumbnails

log = logging.getLogger(__name__)


class Hit(NamedTuple):
    """One result. `similarity` is the cosine similarity of the two search vectors, in [-1, 1];
    `percentile` its rank among the random pairs of the index's images, in percent
    (search/pair_scale.py; None for an index of fewer than two images).
    (A NamedTuple: immutable and ~5x cheaper to make than a frozen dataclass, which is
    felt at ~10 hits a query when a by-id query costs well under 0.1 ms.)"""

    id: int
    path: str
    similarity: float
    width: int | None
    height: int | None
    percentile: float | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "similarity": round(self.similarity, 6),
            "percentile": None if self.percentile is None else round(self.percentile, 4),
            "width": self.width,
            "height": self.height,
        }


def default_decode_slots() -> int:
    """How many query images may be decoded at once: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Engine:
    """Queries over one index directory. Safe to share between threads."""

    def __init__(
        self,
        index_dir: str | os.PathLike,
        *,
        device: str | None = None,
        catalog_url: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        reload_check_s: float = 1.0,
        reload_in_background: bool = False,
        decode_slots: int | None = None,
    ) -> None:
        self.index_dir = Path(index_dir).resolve()
        if not (self.index_dir / MANIFEST).exists():
            raise EngineError(f"{self.index_dir}: no index here; run `lookalike index FOLDER` first")
        self.catalog = Catalog.for_directory(self.index_dir, catalog_url, read_only=True)
        self.device = device
        self.max_pixels = max_pixels
        self.reload_check_s = reload_check_s
        # A server opens a new generation in a background thread and keeps answering from
        # the old one meanwhile: opening a 1M-vector index takes 1-4 s, and on the event
        # loop that would stall every request. A script wants the newest index at once.
        self.reload_in_background = reload_in_background
        self._reloader: threading.Thread | None = None
        self._reload_guard = threading.Lock()
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        # Decoding a query image at the pixel cap holds up to ~280 MB (the decoded image at
        # 4 bytes a pixel, docs/benchmarks.md "Decode memory"); at most `decode_slots` decode
        # at once (default: one per core, which is all the CPU they can use anyway), so N
        # uploads at once cannot hold N times that. The others wait their turn.
        self.decode_slots = max(1, decode_slots or default_decode_slots())
        self._decode_slots = threading.BoundedSemaphore(self.decode_slots)
        self._checked_at = 0.0
        self._manifest_mtime = 0.0
        self._snapshot = self._open()
        root = self.catalog.get_meta("root")
        self.root = Path(root) if root else self.index_dir.parent
        self.thumbnails = Thumbnails(self.index_dir / THUMBNAILS, max_pixels)

    # ---------------------------------------------------------------- snapshots

    def _open(self) -> Snapshot:
        """Open the generation that ``manifest.json`` names (:func:`.snapshot.open_current`), reusing
        the current snapshot's model when the new generation was made by the same one."""
        snap, self._manifest_mtime = open_current(
            self.index_dir, getattr(self, "_snapshot", None), device=self.device, max_pixels=self.max_pixels
        )
        return snap

    def snapshot(self) -> Snapshot:
        """The current snapshot, reopened first if the index on disk has moved on."""
        now = time.monotonic()
        if now - self._checked_at >= self.reload_check_s:
            self._checked_at = now
            try:
                mtime = (self.index_dir / MANIFEST).stat().st_mtime
            except FileNotFoundError:
                mtime = self._manifest_mtime
            if mtime != self._manifest_mtime:
                if self.reload_in_background:
                    self._reload_in_background()
                else:
                    with self._lock:
                        if mtime != self._manifest_mtime:
                            self._swap()
        return self._snapshot

    def _swap(self) -> None:
        """Open the index on disk and make it current (caller holds the lock)."""
        try:
            self._snapshot = self._open()
        except Exception as exc:  # keep serving the old one: a half-written index must not stop us
            log.warning("could not open the new index generation (%s); keeping the old one", exc)

    def _reload_in_background(self) -> None:
        # The guard is held only to start the thread: requests never wait for the open.
        with self._reload_guard:
            if self._reloader is not None and self._reloader.is_alive():
                return  # one at a time; the next check after it finishes sees any newer manifest
            self._reloader = threading.Thread(target=self._swap_locked, name="lookalike-reload", daemon=True)
            self._reloader.start()

    def _swap_locked(self) -> None:
        with self._lock:
            self._swap()

    def reload(self) -> None:
        """Reopen now (tests and admin use)."""
        with self._lock:
            self._snapshot = self._open()

    # ---------------------------------------------------------------- lookups

    def get(self, image_id: int) -> ImageRecord:
        if not -(2**63) <= image_id < 2**63:  # SQLite would raise OverflowError: no id is that large
            raise NotFound(f"no indexed image with id {image_id}")
        rec = self.catalog.get_images([image_id]).get(image_id)
        if rec is None or rec.status != STATUS_OK:
            raise NotFound(f"no indexed image with id {image_id}")
        return rec

    def get_by_path(self, path: str) -> ImageRecord:
        rel = self._relative(path)
        rec = self.catalog.get_by_path(rel) if rel is not None else None
        if rec is None or rec.status != STATUS_OK:
            raise NotFound(f"no indexed image at {path!r}")
        return rec

    def _relative(self, path: str) -> str | None:
        """Catalog form of `path`: absolute, or relative to the working directory if such a file
        exists there, else relative to the indexed root."""
        p = Path(path)
        if not p.is_absolute() and p.exists():
            p = p.resolve()
        if p.is_absolute():
            try:
                return p.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                return None
        return p.as_posix()

    def file_path(self, image_id: int) -> Path:
        """The file of an indexed image. Only catalog paths ever reach the filesystem."""
        rec = self.get(image_id)
        path = (self.root / rec.path).resolve()
        root = self.root.resolve()
        if root not in path.parents:  # a symlink pointing outside the root: refuse
            raise NotFound(f"image {image_id} is outside the indexed folder")
        if not path.is_file():
            raise NotFound(f"image {image_id} ({rec.path}) is no longer on disk")
        return path

    def vector(self, image_id: int) -> np.ndarray:
        snap = self.snapshot()
        try:
            return snap.vectors.get([int(image_id)])
        except KeyError:
            raise NotFound(f"no indexed image with id {image_id}") from None

    def embed(self, source: ImageSource) -> np.ndarray:
        """Decode and embed a query image with the index's own model. Raises ImageLoadError."""
        snap = self.snapshot()
        with self._decode_slots:
            pixels = snap.encoder.load(source)
        with self._embed_lock:  # one inference at a time: parallel torch calls only fight over the cores
            return snap.encoder.embed_pixels(pixels[None])

    # ---------------------------------------------------------------- queries

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        k: int = 10,
        offset: int = 0,
        min_similarity: float | None = None,
        path_prefix: str | None = None,
        exclude_id: int | None = None,
        exclude_ids: frozenset[int] = frozenset(),
        must_exist: frozenset[int] = frozenset(),
    ) -> list[Hit]:
        """Nearest neighbours of `vector`: results offset..offset+k, best first, `exclude_id(s)` left out."""
        if k < 1 or offset < 0:
            raise EngineError("k must be >= 1 and offset >= 0")
        snap = self.snapshot()
        excluded = exclude_ids | ({exclude_id} if exclude_id is not None else set())
        want = offset + k + len(excluded)
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != snap.manifest.dim:
            raise EngineError(f"query vector has {q.shape[1]} dimensions, the index {snap.manifest.dim}")
        pairs = self._rank(snap, q, want, excluded, path_prefix)
        return self._hits(snap, pairs, k, offset, min_similarity, must_exist)

    def _hits(
        self,
        snap: Snapshot,
        pairs: list[tuple[int, float]],
        k: int,
        offset: int,
        min_similarity: float | None,
        must_exist: frozenset[int],
    ) -> list[Hit]:
        """The page offset..offset+k of ranked (id, similarity) pairs, as hits with their rows: the
        ones published with the snapshot, else (an index from before they were) the catalog's."""
        if min_similarity is not None:
            pairs = [(i, s) for i, s in pairs if s >= min_similarity]
        pairs = pairs[offset : offset + k]
        ids = [i for i, _ in pairs] + sorted(must_exist)
        rows = snap.hit_rows.get(ids) if snap.hit_rows is not None else self.catalog.hit_rows(ids)
        missing = must_exist - rows.keys()
        if missing:
            raise NotFound(f"no indexed image with id {min(missing)}")
        # ~4.5 us a page of 10 (23 -> 27.5 us for engine.precomputed; a binary search per hit in
        # Python instead saved 0.8 of them, not worth a second way to compute it)
        scale = snap.pair_scale
        ranks = scale.percentile([s for _, s in pairs]).tolist() if pairs and scale is not None else None
        # A vector with no row is skipped (with rows from the catalog: deleted or failed since).
        return [
            Hit(
                i,
                row[0],
                -1.0 if s < -1.0 else 1.0 if s > 1.0 else s,
                row[1],
                row[2],
                None if ranks is None else ranks[n],
            )
            for n, (i, s) in enumerate(pairs)
            if (row := rows.get(i)) is not None
        ]

    def _rank(
        self, snap: Snapshot, q: np.ndarray, want: int, excluded: set[int] | frozenset[int], path_prefix: str | None
    ) -> list[tuple[int, float]]:
        """(id, similarity) of the `want` nearest vectors, best first, `excluded` left out."""
        n = snap.search.ntotal
        if n == 0:
            return []
        faiss.omp_set_num_threads(QUERY_THREADS)  # per thread in OpenMP: set it on the one searching
        if path_prefix:
            ids = self._ids_with_prefix(path_prefix)
            if not ids:
                return []
            # Filtered queries search the exact vectors: approximate indexes lose recall under a filter.
            sims, found = snap.vectors.search_among(q, min(want, len(ids)), np.array(ids, dtype=np.int64))
        elif snap.manifest.index_type == ondisk.ONDISK:
            # PQ scores only pick candidates; the exact stored vectors rank them (indexer/ondisk.py).
            rerank = int(snap.manifest.params.get("rerank", ondisk.RERANK))
            sims, found = ondisk.search(snap.search, q, min(want, n), snap.vectors.get, rerank)
        else:
            sims, found = snap.search.search(q, min(want, n))
        return [(int(i), float(s)) for i, s in zip(found[0], sims[0], strict=True) if i >= 0 and i not in excluded]

    def search_image(self, source: ImageSource, **kw) -> list[Hit]:
        """Images like the one in `source` (bytes, a stream or a path); see :meth:`query_image`."""
        return self.query_image(source, **kw)[0]

    def query_image(self, source: ImageSource, **kw) -> tuple[list[Hit], list[tuple[int, str]]]:
        """(images like the one in `source`, the indexed images it is).

        The query image itself is left out when it is indexed (:meth:`indexed_as`): a
        result list that starts with the query tells the user nothing, and the caller can
        say which image it is without hashing the query a second time.
        """
        vec = self.embed(source)
        indexed = self.indexed_as(source)
        return self.search_vector(vec, exclude_ids=frozenset(i for i, _ in indexed), **kw), indexed

    def indexed_as(self, source: ImageSource) -> list[tuple[int, str]]:
        """(id, path) of the indexed images that `source` is: the catalog row of a path, and
        every indexed file with the same bytes (a byte-identical file is the same image)."""
        found: dict[int, str] = {}
        data: bytes | None = None
        if isinstance(source, (str, os.PathLike)):
            with contextlib.suppress(NotFound):
                rec = self.get_by_path(os.fspath(source))
                found[rec.id] = rec.path
            with contextlib.suppress(OSError):
                data = Path(source).read_bytes()
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        if data is not None:
            found.update(self._ids_with_hash(bytes_hash(data)))
        return sorted(found.items())

    def _ids_with_hash(self, digest: str) -> dict[int, str]:
        with self.catalog.session() as s:
            q = select(ImageRecord.id, ImageRecord.path)
            return dict(s.execute(q.where(ImageRecord.content_hash == digest, ImageRecord.status == STATUS_OK)).all())

    def search_id(
        self,
        image_id: int,
        *,
        k: int = 10,
        offset: int = 0,
        min_similarity: float | None = None,
        path_prefix: str | None = None,
    ) -> list[Hit]:
        """Images like indexed image `image_id`; itself excluded. Answered from the precomputed
        neighbour table when it holds the page asked for, else by a search from the stored vector
        (no decoding either way)."""
        hits = self.precomputed(image_id, k=k, offset=offset, min_similarity=min_similarity, path_prefix=path_prefix)
        if hits is not None:
            return hits
        return self.search_vector(
            self.vector(image_id),
            k=k,
            offset=offset,
            min_similarity=min_similarity,
            path_prefix=path_prefix,
            exclude_id=image_id,
            must_exist=frozenset({image_id}),
        )

    def precomputed(
        self,
        image_id: int,
        *,
        k: int = 10,
        offset: int = 0,
        min_similarity: float | None = None,
        path_prefix: str | None = None,
    ) -> list[Hit] | None:
        """What :meth:`search_id` answers, if the precomputed neighbour table can answer it
        without a search (a lookup, and the hits' rows); None when a search is needed."""
        if not -(2**63) <= image_id < 2**63:
            raise NotFound(f"no indexed image with id {image_id}")
        if path_prefix or k < 1 or offset < 0:
            return None
        snap = self.snapshot()
        pairs = snap.table_neighbours(image_id, offset + k)
        if pairs is None:
            return None
        # The check that the query id is indexed rides on the hits' rows lookup.
        return self._hits(snap, pairs, k, offset, min_similarity, frozenset({image_id}))

    def search_path(self, path: str, **kw) -> list[Hit]:
        """Images like the indexed image at `path` (relative to the root, or absolute)."""
        return self.search_id(self.get_by_path(path).id, **kw)

    def _ids_with_prefix(self, prefix: str) -> list[int]:
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # LIKE narrows the rows, but SQLite's LIKE ignores ASCII case while paths do not: the
        # prefix itself must match exactly too ("Birds/" is not "birds/").
        exact = func.substr(ImageRecord.path, 1, len(prefix)) == prefix
        with self.catalog.session() as s:
            q = select(ImageRecord.id).where(
                ImageRecord.status == STATUS_OK, ImageRecord.path.like(like, escape="\\"), exact
            )
            return list(s.scalars(q))

    # ---------------------------------------------------------------- stats and thumbnails

    def stats(self) -> dict:
        snap = self.snapshot()
        m = snap.manifest
        cfg = snap.encoder.config
        return {
            "count": self.catalog.count(STATUS_OK),
            "failed": self.catalog.count("failed"),
            "vectors": int(snap.search.ntotal),
            "generation": m.generation,
            "index_type": m.index_type,
            "index_params": m.params,
            "index_reason": m.reason,
            "bytes_per_vector": m.bytes_per_vector,
            # by-id queries up to this many results deep are answered from the precomputed table
            "precomputed_neighbours": m.neighbours_k if snap.neighbours is not None else 0,
            "hit_rows_published": snap.hit_rows is not None,  # else each query reads its hits' rows by SQL
            "model": {
                "id": m.model_id,
                "kind": cfg.kind,
                "image_size": cfg.image_size,
                "dim": snap.encoder.dim,
            },
            "root": str(self.root),
            # what similarity it takes to stand out among this index's pairs (search/pair_scale.py)
            "pair_scale": None if snap.pair_scale is None else snap.pair_scale.summary(),
        }

    def thumbnail(self, image_id: int, size: int = 256) -> bytes:
        """A JPEG of an indexed image at most `size` pixels a side (:mod:`search.thumbnails`)."""
        return self.thumbnails.get(self.get(image_id), lambda: self.file_path(image_id), size)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reloader is not None:
            self._reloader.join(timeout=60)
        self.catalog.close()


#: FAISS OpenMP threads per query. One: a query is a single vector, which gains little from
#: more, and a server runs queries side by side; with more, OpenMP's spin-waiting threads
#: fight the other requests for the cores (on 2 busy cores a 10k-vector query took 28 ms, not 2).
#: OpenMP keeps the setting per thread, so each search sets it on the thread that searches.
QUERY_THREADS = 1
