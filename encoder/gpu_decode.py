"""Decoding JPEGs in batches with torchvision's decoder (nvJPEG on a GPU), Pillow for everything else.

Indexing on a GPU machine is bound by decoding: Pillow in 16 processes decodes a few thousand
640x480 JPEGs a second, nvJPEG ~15k (issue 17). :func:`decode_many_jpeg` is a drop-in for
``encoder.decoding.decode_many``: the same :class:`~encoder.decoding.Decoded` records, in
input order, whose pixels match Pillow's within a few grey levels.

What comes back are host (numpy) arrays, not device tensors, on purpose: every consumer of
decoded files (the distributor's ``ShardResult.from_decoded``, the Ray path, the reports) takes
``Decoded`` records, and a letterboxed image is tiny (64x64x3 = 12 KB), so copying it back and
uploading it again costs far less than the decode of a 640x480 JPEG.

Each file is first looked at by Pillow opening the header only (no pixels decoded): size, mode,
EXIF orientation. Only a plain 8-bit YCbCr or grey JPEG within the pixel cap, ending with its
end-of-image marker, goes to torchvision; everything else (other formats, CMYK, truncated or
empty files, over the cap, anything torchvision rejects) is decoded by Pillow exactly as
``decode_many`` does, so a bad file fails with the same error text either way.

The geometry and the filters are Pillow's (``load_image`` on a JPEG): EXIF orientation applied (the
same eight transpositions as ``ImageOps.exif_transpose``); Pillow's draft (libjpeg's DCT downscale
by 2, 4 or 8, which nvJPEG lacks) emulated by a box average of the full image; its box reduction;
bicubic with antialiasing (torch's kernel is Pillow's); ``letterbox_box`` of the drafted size,
white padding. The pixels differ from Pillow's by under a grey level on average on real pictures,
a few levels on a hard synthetic grid (tests/encoder/test_gpu_decode.py).
"""

from __future__ import annotations

import io
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image

from .decoding import Decoded, _decode_one, default_workers
from .images import (
    _SWAPS_AXES,
    BACKGROUND,
    DEFAULT_MAX_PIXELS,
    LETTERBOX_GAP,
    ImageInfo,
    _orientation,
    _reduce_factors,
    letterbox_box,
)

#: ``LOOKALIKE_GPU_DECODE``: "0" never (Pillow always), "1" always (torchvision's decoder on the
#: encoder's device, CPU included: what the tests and the CPU smoke bench use), unset or "auto":
#: when the encoder runs on CUDA.
ENV_SWITCH = "LOOKALIKE_GPU_DECODE"

#: Files decoded by one call of the batched decoder. nvJPEG's batched decode gains little above
#: a few hundred images, and a batch's full-size images are all in GPU memory at once.
BATCH = 256

#: Full-size pixels decoded at once (a batch is cut further when its images are large): 128 MP
#: is 384 MB of decoded RGB and 1.5 GB as floats while it is shrunk, within a small GPU's memory,
#: and still 400 images of 640x480 or a dozen camera photos.
BATCH_PIXELS = 128_000_000

#: Pillow's header modes the torchvision decoder handles as Pillow does: YCbCr colour and grey.
_PLAIN_MODES = frozenset({"RGB", "L"})


def wants_gpu_decode(device: torch.device, setting: str | None = None) -> bool:
    """Whether indexing with an encoder on `device` decodes JPEGs with torchvision: on CUDA unless
    ``LOOKALIKE_GPU_DECODE=0``; anywhere with ``LOOKALIKE_GPU_DECODE=1``. `setting` overrides the env."""
    value = (setting if setting is not None else os.environ.get(ENV_SWITCH, "auto")).strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    if value not in ("", "auto"):
        raise ValueError(f"{ENV_SWITCH} must be 0, 1 or auto, got {value!r}")
    return device.type == "cuda"


@dataclass
class _Job:
    """One file after the header look: either done (by Pillow) or raw JPEG bytes for torchvision."""

    index: int
    path: str
    done: Decoded | None = None
    data: torch.Tensor | None = None  # the file's bytes, uint8
    info: ImageInfo | None = None  # upright size, "JPEG"
    transpose: Image.Transpose | None = None


def _prepare(index: int, path: str, size: int, max_pixels: int) -> _Job:
    """Read `path` and look at its header; anything but a plain, complete JPEG within the cap is
    decoded by Pillow here, in the reading thread, exactly as decode_many would."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:  # the header only: no pixels are decoded
                plain = (
                    img.format == "JPEG"
                    and img.mode in _PLAIN_MODES
                    and 0 < img.width * img.height <= max_pixels
                    and raw.endswith(b"\xff\xd9")  # a truncated file lacks its end-of-image marker
                )
                if plain:
                    transpose = _orientation(img)
                    w, h = img.size
                    if transpose in _SWAPS_AXES:
                        w, h = h, w
                    info = ImageInfo(width=w, height=h, format=img.format)
    except Exception:  # unreadable, empty, not an image: Pillow's path says why, in its words
        plain = False
    if not plain:
        return _Job(index, path, done=_decode_one((index, path, size, max_pixels)))
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return _Job(index, path, data=data, info=info, transpose=transpose)


def upright(x: torch.Tensor, transpose: Image.Transpose | None) -> torch.Tensor:
    """(C, H, W) turned as Pillow's ``Image.transpose(transpose)`` turns an image (None: as is)."""
    T = Image.Transpose
    if transpose is None:
        return x
    if transpose == T.FLIP_LEFT_RIGHT:
        return x.flip(-1)
    if transpose == T.FLIP_TOP_BOTTOM:
        return x.flip(-2)
    if transpose == T.ROTATE_180:
        return x.flip(-2, -1)
    if transpose == T.TRANSPOSE:
        return x.transpose(-2, -1)
    if transpose == T.ROTATE_270:  # 90 degrees clockwise
        return x.transpose(-2, -1).flip(-1)
    if transpose == T.ROTATE_90:  # 90 degrees anticlockwise
        return x.transpose(-2, -1).flip(-2)
    if transpose == T.TRANSVERSE:
        return x.transpose(-2, -1).flip(-2, -1)
    raise ValueError(f"unknown transposition {transpose!r}")


def draft_scale(width: int, height: int, size: int) -> int:
    """The DCT scaling (1, 2, 4 or 8) Pillow's ``draft("RGB", (size, size))`` picks for a JPEG: the
    largest that keeps both sides at least `size` (JpegImagePlugin.draft)."""
    scale = min(width // size, height // size)
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _shrink(x: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """Box-average (N, C, H, W) float by (fy, fx), a partial box at the far edges averaging what it
    covers: Pillow's ``Image.reduce``, and close to libjpeg's scaled IDCT."""
    if (fy, fx) == (1, 1):
        return x
    return torch.nn.functional.avg_pool2d(x, (fy, fx), ceil_mode=True)


def letterbox_tensors(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Upright (3, H, W) uint8 full-size JPEG images -> (N, size, size, 3) uint8 letterboxes on their
    device, made the way ``encoder.images.load_image`` makes them from a JPEG: Pillow's draft (a
    DCT downscale by 1, 2, 4 or 8, here a box average), its box reduction (``reducing_gap`` 3),
    then bicubic with antialiasing (torch's kernel is Pillow's, Keys a=-0.5) into
    ``letterbox_box`` of the drafted size, white padding, rounded as Pillow rounds."""
    device = images[0].device
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    out[:] = torch.tensor(BACKGROUND, dtype=torch.uint8, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault((im.shape[1], im.shape[2]), []).append(i)
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx])
        s = draft_scale(w, h, size)
        dw, dh = -(-w // s), -(-h // s)  # the drafted size, as Pillow's draft sets it
        fx, fy = _reduce_factors(dw, dh, size, LETTERBOX_GAP)
        x0, y0, x1, y1 = letterbox_box(dw, dh, size)
        if (y1 - y0, x1 - x0) != (h, w):
            x = _shrink(_shrink(x.float(), s, s), fy, fx)
            if x.shape[-2:] != (y1 - y0, x1 - x0):
                x = torch.nn.functional.interpolate(
                    x, size=(y1 - y0, x1 - x0), mode="bicubic", antialias=True, align_corners=False
                )
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        out[idx, y0:y1, x0:x1] = x.permute(0, 2, 3, 1)
    return out


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """torchvision's decoder on `device`, batched; a batch it rejects is retried file by file so
    one bad file costs only itself (None: rejected)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


@torch.inference_mode()
def _finish(jobs: list[_Job], size: int, max_pixels: int, device: torch.device) -> list[Decoded]:
    """Decode and letterbox the torchvision share of `jobs` on `device`; the results of all of them in order."""
    todo = [j for j in jobs if j.done is None]
    start = 0
    while start < len(todo):  # sub-batches bounded in full-size pixels
        end, pixels = start, 0
        while end < len(todo) and (
            end == start or pixels + todo[end].info.width * todo[end].info.height <= BATCH_PIXELS
        ):
            pixels += todo[end].info.width * todo[end].info.height
            end += 1
        part = todo[start:end]
        images = _decode_jpegs([j.data for j in part], device)
        ok = []
        for j, im in zip(part, images, strict=True):
            if im is None or im.shape[0] != 3:  # rejected: Pillow decodes it, or says why not
                j.done = _decode_one((j.index, j.path, size, max_pixels))
            else:
                ok.append((j, upright(im, j.transpose)))
        if ok:
            boxes = letterbox_tensors([im for _, im in ok], size).cpu().numpy()
            for (j, _), px in zip(ok, boxes, strict=True):
                j.done = Decoded(j.index, j.path, px, j.info)
        start = end
    for j in jobs:
        j.data = None  # the bytes go as soon as the batch is decoded
    return [j.done for j in jobs]


def decode_many_jpeg(
    paths: Iterable[str | os.PathLike],
    size: int,
    *,
    device: torch.device | str = "cuda",
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch: int = BATCH,
    prefetch: int = 4,
) -> Iterator[Decoded]:
    """Like ``encoder.decoding.decode_many``: a :class:`Decoded` per path, in input order.

    JPEGs are decoded by torchvision on `device` in batches of `batch`; `workers` threads read
    files, look at headers and decode with Pillow what torchvision does not take. Up to
    `prefetch` batches are read ahead, so reading overlaps the device's work.
    """
    device = torch.device(device)
    workers = default_workers() if workers is None else max(1, workers)
    jobs = ((i, os.fspath(p)) for i, p in enumerate(paths))
    pending: deque[list[Future[_Job]]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lookalike-jpeg")
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < prefetch:
                chunk = [pool.submit(_prepare, i, p, size, max_pixels) for i, p in _take(jobs, batch)]
                if not chunk:
                    exhausted = True
                    break
                pending.append(chunk)
            if not pending:
                return
            yield from _finish([f.result() for f in pending.popleft()], size, max_pixels, device)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take(it: Iterator[tuple[int, str]], n: int) -> list[tuple[int, str]]:
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out
