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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, before any resizing: its upright size (EXIF
    orientation applied) and its format."""

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


#: Modes whose samples are wider than 8 bits: mapped onto 0..255 (see :func:`_to_rgb`).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: Pixels converted at a time. A decoded image at the pixel cap is up to 256 MB (Pillow keeps
#: RGB, RGBA, CMYK, I and F at 4 bytes a pixel); converting it whole took 3 to 6 times that
#: (issue 14). Converted a band of rows at a time, each band reduced as soon as it is
#: converted, a conversion costs a few bands' worth (~1 M pixels: 4-32 MB) beyond the
#: decoded image itself.
BAND_PIXELS = 1 << 20

#: EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: Transpositions that swap width and height, and those that reverse the order of the rows.
_SWAPS_AXES = {
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
}
_REVERSES_ROWS = {
    Image.Transpose.ROTATE_180,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
}


def _wide_range(img: Image.Image) -> tuple[float, float]:
    """(min, max) of a wide-sample image ignoring NaN, read a band at a time (no full-size copy)."""
    w, h = img.size
    step = max(1, BAND_PIXELS // w)
    lo, hi = np.inf, -np.inf
    for y in range(0, h, step):
        arr = np.asarray(img.crop((0, y, w, min(h, y + step))))
        if arr.dtype.kind == "f":
            if np.isnan(arr).all():
                continue
            lo, hi = min(lo, float(np.nanmin(arr))), max(hi, float(np.nanmax(arr)))
        else:
            lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    return (lo, hi) if lo <= hi else (np.nan, np.nan)


def _to_rgb(
    img: Image.Image, background: tuple[int, int, int], wide_range: tuple[float, float] | None = None
) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto `background`.

    `wide_range` is the (min, max) of the whole image when `img` is one band of it (the
    mapping of I and F samples onto 0..255 depends on the whole image's range).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_MODES:
        if mode.startswith("I;16"):
            # 16-bit range onto 8-bit, in integers: floor(v / 257), as the float division did.
            arr = np.asarray(img).astype(np.uint16, copy=False) // 257
            return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
        # float64 as before (the same pixels to the last grey level), in place: one copy of a band.
        arr = np.array(img, dtype=np.float64)
        lo, hi = wide_range if wide_range is not None else _wide_range(img)
        if mode == "I" and 255 < hi <= 65535 and lo >= 0:
            arr /= 257.0  # 16-bit range onto 8-bit
        elif mode == "F" and lo >= 0 and hi <= 1.0:
            arr *= 255.0
        elif lo < 0 or hi > 255:
            arr -= lo  # unknown range: stretch
            arr /= max(hi - lo, 1e-12)
            arr *= 255.0
        np.nan_to_num(arr, copy=False, nan=0.0)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode in ("RGBa", "La", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _fit(w: int, h: int, size: int) -> tuple[int, int]:
    """The size of a w x h image fitted inside a `size` x `size` square, aspect ratio kept."""
    scale = size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where a `width` x `height` picture sits inside its :func:`letterbox` square of `size`:
    (left, top, right, bottom); the rest is padding."""
    nw, nh = _fit(width, height, size)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    return x0, y0, x0 + nw, y0 + nh


def _reduce_factors(w: int, h: int, size: int | None, gap: float) -> tuple[int, int]:
    """The box reduction Pillow's resize makes first for `reducing_gap=gap`, on the way to _fit."""
    if not size:
        return 1, 1
    nw, nh = _fit(w, h, size)
    return max(1, int(w / nw / gap)), max(1, int(h / nh / gap))


def _orientation(img: Image.Image) -> Image.Transpose | None:
    try:
        return _ORIENTATION.get(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is no reason to reject the pixels
        return None


def _upright_rgb(
    img: Image.Image, background: tuple[int, int, int], fit: int | None, gap: float
) -> tuple[Image.Image, tuple[int, int], tuple[float, float, float, float]]:
    """The decoded `img` upright (EXIF orientation), in RGB, box-reduced on the way to `fit`.

    Returns (image, the upright full size, box): `box` is the part of the image that
    stands for the whole upright image (fractional when a side is not a multiple of the
    reduction). Resizing that box gives what resizing the full-size upright RGB image
    with ``reducing_gap=gap`` gives, since that is the same box reduction followed by
    the same filter: the pixels do not change, only the memory. Converting at full
    size took 3 to 6 times the decoded image's memory (issue 14).

    The work goes a band of rows at a time (crop, turn upright, convert, reduce, paste),
    so beside the decoded image only a band and the small result are alive. Bands
    are cut where the reduction's blocks start, counted in the upright image's order.
    """
    method = _orientation(img)
    w, h = img.size
    full = (h, w) if method in _SWAPS_AXES else (w, h)
    fx, fy = _reduce_factors(*full, fit, gap)
    box = (0.0, 0.0, full[0] / fx, full[1] / fy)
    wide = _wide_range(img) if img.mode in ("I", "F") else None
    # Each band is turned upright by exif_transpose itself, from the orientation the band
    # carries in its EXIF (a crop keeps img.info; a TIFF's orientation is a tag of the file,
    # which a crop does not keep, so the band is given it).
    exif = img.getexif().tobytes() if method is not None else None
    out = Image.new("RGB", (-(-full[0] // fx), -(-full[1] // fy)), background)
    # The original's rows run along the upright image's y axis, or along its x axis when turned.
    along = fx if method in _SWAPS_AXES else fy
    step = max(1, BAND_PIXELS // w // along) * along
    for a in range(0, h, step):  # [a, b): rows counted in the upright image's order
        b = min(h, a + step)
        y0, y1 = (h - b, h - a) if method in _REVERSES_ROWS else (a, b)
        band = img.crop((0, y0, w, y1))
        if exif is not None:
            band.info["exif"] = exif
        band = _to_rgb(ImageOps.exif_transpose(band), background, wide)
        if (fx, fy) != (1, 1):
            band = band.reduce((fx, fy))
        out.paste(band, (a // fx, 0) if method in _SWAPS_AXES else (0, a // fy))
        del band
    return out, full, box


def letterbox(img: Image.Image, size: int, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Fit `img` inside a `size` x `size` square, keeping its aspect ratio, padding with `background`."""
    return _letterbox(img, size, background, img.size, (0.0, 0.0, float(img.width), float(img.height)))


def _letterbox(
    img: Image.Image,
    size: int,
    background: tuple[int, int, int],
    full: tuple[int, int],
    box: tuple[float, float, float, float],
) -> Image.Image:
    """:func:`letterbox` of the `full`-size image that `box` of `img` stands for (see :func:`_upright_rgb`)."""
    nw, nh = _fit(*full, size)
    if (nw, nh) != full:
        if img.size == full:
            # reducing_gap: a cheap box reduction first, then an accurate filter: much faster
            # on large images with no visible loss at our target sizes.
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=LETTERBOX_GAP)
        else:  # already reduced by _upright_rgb, just as resize's reducing_gap would have
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, box=box)
    if (nw, nh) == (size, size):
        return img
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(img, letterbox_box(*full, size)[:2])
    return canvas


#: The reducing gap of letterboxing (and so of every model input), and that of open_image's
#: `draft_size` (Pillow's thumbnail default: the result stays at least twice the size asked for).
#: libwebp decodes into its own canvas, and Pillow copies it twice, before any of this module's
#: code runs: about 15 bytes a pixel held at once (977 MB at 8000x8000, docs/benchmarks.md,
#: "Decode memory") against 2-4 for the other formats. So WebP gets a quarter of the pixel cap,
#: which keeps one decode under the same ~300 MB as every other format.
WEBP_COST = 4
LETTERBOX_GAP = 3.0
OPEN_GAP = 2.0


def _decode(
    source: ImageSource,
    *,
    max_pixels: int,
    fit: int | None,
    gap: float,
    background: tuple[int, int, int],
) -> tuple[Image.Image, ImageInfo, tuple[int, int], tuple[float, float, float, float]]:
    """Decode `source`: (RGB image, header info, upright full size, box); see :func:`_upright_rgb`."""
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
            if img.format == "WEBP" and pixels > max_pixels // WEBP_COST:
                raise ImageLoadError(
                    name,
                    f"WebP image is {img.width}x{img.height} = {pixels:,} pixels, over the limit of "
                    f"{max_pixels // WEBP_COST:,} for WebP (its decoder needs {WEBP_COST}x the memory of others)",
                    kind=LoadFailure.TOO_LARGE,
                )
            # Animated images (GIF, APNG, WebP): the first frame stands for the file.
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if fit and img.format == "JPEG":
                img.draft("RGB", (fit, fit))  # JPEG downscales by 1/2, 1/4 or 1/8 in the decoder itself
            img.load()
            if _orientation(img) in _SWAPS_AXES:  # the size a viewer shows: a sideways-stored photo is upright
                info = ImageInfo(width=info.height, height=info.width, format=info.format)
            rgb, full, box = _upright_rgb(img, background, fit, gap)
            if rgb is not img:
                img.close()  # the decoded full-size pixels go now, not when the caller is done
            rgb.load()
            return rgb, info, full, box
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


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> tuple[Image.Image, ImageInfo]:
    """Decode `source` into an RGB Pillow image, EXIF orientation applied.

    With `draft_size`, the image may come back smaller, though still at least that
    large: JPEG decoding downscales by 1/2, 1/4 or 1/8 in the decoder itself, and
    any image is box-reduced by whole factors while it stays at least twice the size
    that fits inside `draft_size` (so a resize to that size loses nothing visible).
    Memory: the decoded image plus a few megabytes, whatever the mode.
    Raises :class:`ImageLoadError` for anything that is not a decodable image.
    """
    img, info, _, _ = _decode(source, max_pixels=max_pixels, fit=draft_size, gap=OPEN_GAP, background=background)
    return img, info


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
    img, info, full, box = _decode(source, max_pixels=max_pixels, fit=size, gap=LETTERBOX_GAP, background=background)
    return np.asarray(_letterbox(img, size, background, full, box), dtype=np.uint8), info


def to_tensor_batch(arrays: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1] torch tensor."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arrays))
    return t.permute(0, 3, 1, 2).float().div_(255.0)
