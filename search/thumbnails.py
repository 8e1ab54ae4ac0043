"""Thumbnails of indexed images: JPEGs made on demand and cached by content under the index.

The cache holds each image at the few sizes of :data:`THUMBNAIL_SIZES` only; any other size asked
for is scaled down from the next cached one, so it holds a handful of files an image, not one per
size a client happens to ask for. A read-only index still serves thumbnails, uncached.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from encoder.atomic import atomic_write_bytes
from encoder.images import open_image
from indexer import ImageRecord

log = logging.getLogger(__name__)

#: The thumbnail sizes kept on disk (the web page asks for 64-512; reports embed 128).
THUMBNAIL_SIZES = (64, 128, 256, 512, 1024)


def jpeg(img: Image.Image) -> bytes:
    """`img` as a JPEG (RGB, quality 82): small enough for a results page, sharp enough to judge."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=82, optimize=True)
    return buf.getvalue()


class Thumbnails:
    """The thumbnail cache of one index directory (``cache_dir``)."""

    def __init__(self, cache_dir: Path, max_pixels: int) -> None:
        self.cache_dir = cache_dir
        self.max_pixels = max_pixels

    def get(self, rec: ImageRecord, path: Callable[[], Path], size: int = 256) -> bytes:
        """A JPEG of `rec` at most `size` pixels a side; `path` gives its file, called only when
        the cached size has to be made."""
        cached_size = next((s for s in THUMBNAIL_SIZES if s >= size), THUMBNAIL_SIZES[-1])
        data = self._cached(rec, path, cached_size)
        if cached_size == size:
            return data
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((size, size))
            return jpeg(img)

    def _cached(self, rec: ImageRecord, path: Callable[[], Path], size: int) -> bytes:
        key = rec.content_hash or f"id{rec.id}-{rec.size}-{rec.mtime_ns}"
        cached = self.cache_dir / f"{key}-{size}.jpg"
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        img, _ = open_image(path(), max_pixels=self.max_pixels, draft_size=size)
        img.thumbnail((size, size))
        data = jpeg(img)
        try:
            atomic_write_bytes(cached, data)
        except OSError as exc:
            log.debug("thumbnail cache not written: %s", exc)
        return data
