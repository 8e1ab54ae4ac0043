"""Decoding and preprocessing of image files, shared by training, indexing and queries.

Every path that turns bytes into pixels goes through :func:`load_image`, so a
file is read the same way when the model learns from it, when it is indexed,
and when it is used as a query.

Aspect ratio: images are *letterboxed* (fitted inside the square and padded
with the background colour) rather than cropped or stretched. Cropping throws
away content that may be what makes two images alike (and makes a 10% crop of
an image look unlike its original); stretching distorts shapes, so a tall and
a wide picture of the same thing would embed differently. Padding keeps the
whole image and its proportions.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError, LoadFailure

ImageSource = Union[str, os.PathLike, bytes, BinaryIO]  # noqa: UP007 - a runtime alias

#: Default cap on decoded pixels (width * height). 64 MP covers any camera;
#: a decompression bomb claims far more than that in its header.
DEFAULT_MAX_PIXELS = 64_000_000

#: Transparent pixels are composited onto this colour, and letterbox padding
#: uses it too, so a cut-out and its padding look the same to the model.
BACKGROUND = (255, 255, 255)

#: File name endings treated as images when walking a folder (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".ico"}
)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, before any resizing."""

    width: int
    height: int
    format: str | None


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return "<uploaded image>"
    return getattr(source, "name", "<stream>")


def _open_stream(source: ImageSource, name: str) -> BinaryIO:
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageLoadError(name, "empty file (0 bytes)", kind=LoadFailure.EMPTY)
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            size = os.path.getsize(source)
            if size == 0:
                raise ImageLoadError(name, "empty file (0 bytes)", kind=LoadFailure.EMPTY)
            return open(source, "rb")  # noqa: SIM115 - closed by the caller
        except ImageLoadError:
            raise
        except IsADirectoryError:
            raise ImageLoadError(name, "is a directory, not an image file", kind=LoadFailure.NOT_A_FILE) from None
        except OSError as exc:
            kind = LoadFailure.NOT_FOUND if isinstance(exc, FileNotFoundError) else LoadFailure.UNREADABLE
            raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})", kind=kind) from None
    return source


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto `background`."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if mode.startswith("I;16") or (mode == "I" and 255 < hi <= 65535 and lo >= 0):
            arr = arr / 257.0  # 16-bit range onto 8-bit
        elif mode == "F" and lo >= 0 and hi <= 1.0:
            arr = arr * 255.0
        elif lo < 0 or hi > 255:
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0  # unknown range: stretch
        arr = np.nan_to_num(arr, nan=0.0)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBa", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def letterbox(img: Image.Image, size: int, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Fit `img` inside a `size` x `size` square, keeping its aspect ratio, padding with `background`."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        # reducing_gap: a cheap box reduction first, then an accurate filter: much faster
        # on large images with no visible loss at our target sizes.
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if (nw, nh) == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> tuple[Image.Image, ImageInfo]:
    """Decode `source` into an RGB Pillow image, EXIF orientation applied.

    `draft_size` lets JPEG decoding downscale by 1/2, 1/4 or 1/8 in the decoder
    itself (much faster) while staying at least that large.
    Raises :class:`ImageLoadError` for anything that is not a decodable image.
    """
    name = _describe(source)
    stream = _open_stream(source, name)
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) between 1x and 2x its own cap; we check ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(stream)
            except UnidentifiedImageError:
                raise ImageLoadError(name, "not a recognised image format", kind=LoadFailure.NOT_AN_IMAGE) from None
            except Image.DecompressionBombError as exc:
                raise ImageLoadError(name, f"too many pixels ({exc})", kind=LoadFailure.TOO_LARGE) from None
            info = ImageInfo(width=img.width, height=img.height, format=img.format)
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise ImageLoadError(
                    name,
                    f"image is {img.width}x{img.height} = {pixels:,} pixels, over the limit of {max_pixels:,}",
                    kind=LoadFailure.TOO_LARGE,
                )
            if pixels == 0:
                raise ImageLoadError(name, "image has no pixels (0 width or height)", kind=LoadFailure.EMPTY)
            # Animated images (GIF, APNG, WebP): the first frame stands for the file.
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, background)
            rgb.load()
            return rgb, info
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"too many pixels ({exc})", kind=LoadFailure.TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            raise ImageLoadError(name, f"truncated image data ({text})", kind=LoadFailure.TRUNCATED) from None
        raise ImageLoadError(name, f"corrupt image data ({text})", kind=LoadFailure.CORRUPT) from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode this image", kind=LoadFailure.OUT_OF_MEMORY) from None
    finally:
        if not isinstance(source, (bytes, bytearray)) and stream is not source:
            stream.close()


def load_image(
    source: ImageSource,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = BACKGROUND,
) -> np.ndarray:
    """Decode and letterbox `source` to a (size, size, 3) uint8 array."""
    return load_image_with_info(source, size, max_pixels=max_pixels, background=background)[0]


def load_image_with_info(
    source: ImageSource,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = BACKGROUND,
) -> tuple[np.ndarray, ImageInfo]:
    """Like :func:`load_image`, also returning the original size and format."""
    img, info = open_image(source, max_pixels=max_pixels, draft_size=size, background=background)
    return np.asarray(letterbox(img, size, background), dtype=np.uint8), info


def to_tensor_batch(arrays: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] torch tensor."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arrays))
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def is_image_name(path: str | os.PathLike) -> bool:
    """True when the file name ends like an image we can try to decode."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def iter_image_files(
    folder: str | os.PathLike, *, skip_dirs: tuple[str, ...] = ()
) -> Iterator[tuple[Path, os.stat_result]]:
    """Yield (path, stat) for every image-named file under `folder`, recursively.

    Hidden files and folders are skipped, as are `skip_dirs`; symlinked folders
    are not followed, so symlink loops cannot trap the walk. Unreadable folders
    are skipped silently (their files cannot be indexed anyway).
    """
    skip = {os.path.realpath(d) for d in skip_dirs}
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if os.path.realpath(entry.path) not in skip:
                        stack.append(Path(entry.path))
                elif is_image_name(entry.name) and entry.is_file(follow_symlinks=True):
                    yield Path(entry.path), entry.stat(follow_symlinks=True)
            except OSError:
                continue


def find_images(folder: str | os.PathLike, *, skip_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Every image-named file under `folder` (see :func:`iter_image_files`), sorted."""
    return sorted(p for p, _ in iter_image_files(folder, skip_dirs=skip_dirs))
