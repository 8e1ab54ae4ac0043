"""Image decoding: every mode becomes RGB, bad files raise one clear error."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoder.errors import LoadFailure
from encoder.image_files import find_images
from encoder.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    letterbox,
    load_image,
    load_image_with_info,
    open_image,
)

S = 32


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("1", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("F", "TIFF"),
        ("RGB", "WEBP"),
        ("P", "GIF"),
        ("RGB", "BMP"),
    ],
)
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    img = Image.new(mode, (40, 20))
    path = _save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    arr = load_image(path, S)
    assert arr.shape == (S, S, 3) and arr.dtype == np.uint8


def test_transparency_composited_onto_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((5, 5), (0, 0, 255, 255))
    arr = load_image(_save(img, tmp_path / "t.png", "PNG"), 10)
    assert tuple(arr[0, 0]) == (255, 255, 255)
    assert tuple(arr[5, 5]) == (0, 0, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 200, 10] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    arr = load_image(_save(img, tmp_path / "p.png", "PNG", transparency=0), 8)
    assert tuple(arr[4, 4]) == (255, 255, 255)


def test_sixteen_bit_scaled_not_clipped(tmp_path: Path) -> None:
    arr16 = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(arr16)
    out = load_image(_save(img, tmp_path / "g16.png", "PNG"), 8)
    assert 120 <= out[4, 4, 0] <= 135


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = _save(img, tmp_path / "o.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    rgb, info = open_image(path)
    assert rgb.size == (20, 40)  # now portrait
    assert (info.width, info.height) == (20, 40)  # the size a viewer shows, as the catalog stores it


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    arr = load_image(path, 16)
    assert arr[8, 8, 0] > 200 and arr[8, 8, 1] < 50


def test_letterbox_keeps_aspect_and_pads() -> None:
    img = Image.new("RGB", (100, 50), (0, 0, 0))
    out = np.asarray(letterbox(img, 20))
    assert out.shape == (20, 20, 3)
    assert out[0, 10].tolist() == [255, 255, 255]  # padding above
    assert out[10, 10].tolist() == [0, 0, 0]  # the image in the middle


def test_large_jpeg_uses_draft_and_keeps_header_size(tmp_path: Path) -> None:
    img = Image.new("RGB", (2000, 1500), (10, 120, 200))
    path = _save(img, tmp_path / "big.jpg", "JPEG")
    arr, info = load_image_with_info(path, 64)
    assert (info.width, info.height, info.format) == (2000, 1500, "JPEG")
    assert arr.shape == (64, 64, 3) and abs(int(arr[32, 32, 2]) - 200) < 8


def test_bytes_and_streams(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(buf, "PNG")
    assert load_image(buf.getvalue(), 8).shape == (8, 8, 3)
    buf.seek(0)
    assert load_image(buf, 8).shape == (8, 8, 3)


def test_mislabelled_file_decoded_by_content(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "really_a_png.jpg", "PNG")
    _, info = load_image_with_info(path, 8)
    assert info.format == "PNG"


@pytest.mark.parametrize(
    "case,reason",
    [
        ("empty", "empty file"),
        ("truncated_jpeg", "truncated"),
        ("not_image", "not a recognised image"),
        ("truncated_png", ""),
    ],
)
def test_bad_files_raise_clear_error(bad_files: dict[str, Path], case: str, reason: str) -> None:
    path = bad_files[case]
    with pytest.raises(ImageLoadError) as err:
        load_image(path, S)
    assert str(path) in str(err.value)
    assert reason in err.value.reason
    assert err.value.reason  # always says why


def test_empty_upload_bytes() -> None:
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"", S)


def test_pixel_cap(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (300, 300)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(path, S, max_pixels=10_000)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: a decompression bomb's calling card."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_decompression_bomb_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(ImageLoadError, match="pixels"):
        load_image(path, S)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(tmp_path / "nope.jpg", S)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path, S)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "locked.png", "PNG")
    path.chmod(0)
    with pytest.raises(ImageLoadError, match="cannot read"):
        load_image(path, S)


def test_the_walk_takes_the_names_is_image_name_takes(tmp_path: Path) -> None:
    """is_image_name finds the ending without os.path.splitext; it must give splitext's answer, paths
    and leading dots included, and the walk must take exactly the names it takes (hidden ones skipped)."""
    from encoder.image_files import IMAGE_EXTENSIONS, is_image_name, iter_image_paths

    names = ["a.JPG", "b.jpeg.txt", "c.", "d", "jpg", "e.tar.png", "f..png", "g.Png", "h.tiff", "i.ico.bak",
             "j png", "k.webp", "l.j", "m.jpe", "n..", "o.GiF", ".p.png", "..q.png"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    for name in [*names, "x/.png", "x/..png", "x.d/.a.png", "x.png/y", "x.d/y.JPEG"]:
        assert is_image_name(name) == (os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS), name
    walked = {Path(p).name for p, _ in iter_image_paths(tmp_path)}
    assert walked == {n for n in names if not n.startswith(".") and is_image_name(n)}
    assert walked == {"a.JPG", "e.tar.png", "f..png", "g.Png", "h.tiff", "k.webp", "m.jpe", "o.GiF"}


def test_find_images_skips_hidden_and_loops(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for p in ("a/x.png", "a/b/y.JPG", ".hidden/z.png", "a/readme.txt"):
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/b/y.JPG", "a/x.png"]


def _no_pixels(_stream: object) -> Image.Image:
    return Image.new("RGB", (0, 5))


def _out_of_memory(_img: Image.Image) -> Image.Image:
    raise MemoryError


@pytest.mark.parametrize(
    "case,kind,reason",
    [
        ("empty", LoadFailure.EMPTY, "empty file (0 bytes)"),
        ("empty_bytes", LoadFailure.EMPTY, "empty file (0 bytes)"),
        ("no_pixels", LoadFailure.EMPTY, "image has no pixels"),
        ("missing", LoadFailure.NOT_FOUND, "cannot read file ("),
        ("under_a_file", LoadFailure.UNREADABLE, "cannot read file ("),  # (permissions: likewise, but root reads all)
        ("directory", LoadFailure.NOT_A_FILE, "is a directory, not an image file"),
        ("not_image", LoadFailure.NOT_AN_IMAGE, "not a recognised image format"),
        ("over_the_limit", LoadFailure.TOO_LARGE, "over the limit of 10,000"),
        ("bomb", LoadFailure.TOO_LARGE, "too many pixels"),
        ("truncated_jpeg", LoadFailure.TRUNCATED, "truncated image data"),
        ("truncated_png", LoadFailure.TRUNCATED, "truncated image data"),
        ("bad_png_data", LoadFailure.CORRUPT, "corrupt image data"),
        ("out_of_memory", LoadFailure.OUT_OF_MEMORY, "not enough memory to decode this image"),
    ],
)
def test_every_failure_says_its_kind(
    bad_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    kind: LoadFailure,
    reason: str,
) -> None:
    """`kind` is what a caller branches on (the API's status); the reason text stays the sentence it was."""
    good = _save(Image.new("RGB", (30, 30)), tmp_path / "good.png", "PNG")
    sources = {
        **bad_files,
        "empty_bytes": b"",
        "no_pixels": good,
        "missing": tmp_path / "nope.jpg",
        "directory": tmp_path,
        "under_a_file": good / "x.png",
        "over_the_limit": _save(Image.new("RGB", (300, 300)), tmp_path / "big.png", "PNG"),
        "bomb": _png_claiming(100_000, 100_000),
        "bad_png_data": _png_claiming(4, 4).replace(zlib.compress(b"\x00" * 64), b"not zlib data"),
        "out_of_memory": good,
    }
    if case == "no_pixels":
        monkeypatch.setattr("encoder.images.Image.open", _no_pixels)
    if case == "out_of_memory":
        monkeypatch.setattr("encoder.images.ImageOps.exif_transpose", _out_of_memory)
    with pytest.raises(ImageLoadError) as err:
        load_image(sources[case], S, max_pixels=10_000 if case == "over_the_limit" else DEFAULT_MAX_PIXELS)
    assert err.value.kind is kind
    assert reason in err.value.reason


def test_webp_gets_a_quarter_of_the_pixel_cap(tmp_path: Path) -> None:
    """libwebp holds ~15 bytes a pixel before our code runs: WebP is capped lower than the rest."""
    from encoder.images import WEBP_COST

    img = Image.new("RGB", (20, 20), (200, 30, 30))
    webp, png = _save(img, tmp_path / "a.webp", "WEBP"), _save(img, tmp_path / "a.png", "PNG")
    cap = 400 * WEBP_COST - 1  # the PNG fits, the WebP (400 pixels > cap / WEBP_COST) does not
    assert load_image(png, 16, max_pixels=cap).shape == (16, 16, 3)
    with pytest.raises(ImageLoadError, match="WebP image is 20x20") as err:
        load_image(webp, 16, max_pixels=cap)
    assert err.value.kind is LoadFailure.TOO_LARGE
    assert load_image(webp, 16, max_pixels=400 * WEBP_COST).shape == (16, 16, 3)
