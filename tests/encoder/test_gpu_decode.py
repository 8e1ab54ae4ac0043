"""Batched JPEG decoding with torchvision (encoder/gpu_decode.py), run here on the CPU: torchvision's
decoder is the same function on either device, so what is checked is everything around nvJPEG:
the header look, EXIF orientation, letterbox geometry and resize, the fallbacks to Pillow with
Pillow's own errors, the order of results, and which path indexing picks for which device."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import encoder.gpu_decode as gpu_decode
import indexer.distribute as distribute
from encoder import Encoder, ModelConfig, create_model, save_model
from encoder.decoding import Decoded, decode_many
from encoder.gpu_decode import ENV_SWITCH, decode_many_jpeg, letterbox_tensors, upright, wants_gpu_decode
from encoder.images import DEFAULT_MAX_PIXELS, letterbox_box
from indexer.distribute import ThreadDistributor, make_shards

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec; the GPU machines' 0.26 does not.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")

#: Tolerances against Pillow, in grey levels of 0..255. Both paths shrink the same way (Pillow's draft,
#: a DCT downscale by 2, 4 or 8, here emulated by a box average; its box reduction; bicubic with
#: Pillow's kernel), but libjpeg's scaled IDCT is not quite a box average, and Pillow resizes in two
#: 8-bit passes, rounding and clipping between them, where torch keeps floats. Measured: the sample
#: drawings 0.2 levels on average, at most 19 on a hard edge; the grid of 8-pixel squares with
#: 200-level steps below, the worst case for the draft emulation, 1.7 on average, 14 at most. The
#: bound on the mean stays under the issue's 3/255; a wrong geometry (a missed flip, a letterbox a
#: pixel off) costs tens of levels on average, and leaving the draft out 3 on a drawing.
MEAN_LEVELS = 2.5
MAX_LEVELS = 24


def _picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Gradients, a grid and some noise: smooth areas and fine detail, different in every quadrant."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), ((x // 8 + y // 8) % 2) * 200], -1)
    return (arr * 0.8 + rng.integers(0, 50, arr.shape)).astype(np.uint8)


def _jpeg(path: Path, arr: np.ndarray, mode: str = "RGB", **save) -> Path:
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, "JPEG", quality=92, **save)
    return path


def _both(paths: list[Path], size: int, **kw) -> tuple[list[Decoded], list[Decoded]]:
    """(torchvision path, Pillow path) on the CPU."""
    got = list(decode_many_jpeg(paths, size, device="cpu", workers=2, **kw))
    ref = list(decode_many(paths, size, workers=0, max_pixels=kw.get("max_pixels", DEFAULT_MAX_PIXELS)))
    assert [d.index for d in got] == list(range(len(paths)))
    return got, ref


def _levels(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(diff.mean()), int(diff.max())


@pytest.mark.parametrize("size", [64, 128])
def test_pixels_match_pillow_over_sizes_and_aspect_ratios(tmp_path: Path, size: int) -> None:
    dims = [(640, 480), (480, 640), (64, 64), (1000, 1000), (2400, 1600), (100, 30), (33, 257), (17, 13), (3000, 200)]
    paths = [_jpeg(tmp_path / f"{w}x{h}.jpg", _picture(w, h, i)) for i, (w, h) in enumerate(dims)]
    got, ref = _both(paths, size)
    for g, r, (w, h) in zip(got, ref, dims, strict=True):
        assert g.error is None and g.pixels.shape == (size, size, 3) and g.pixels.dtype == np.uint8
        assert g.info == r.info and g.info.format == "JPEG" and (g.info.width, g.info.height) == (w, h)
        mean, worst = _levels(g.pixels, r.pixels)
        assert mean < MEAN_LEVELS and worst <= MAX_LEVELS, (w, h, mean, worst)
        # the padding is where letterbox_box says, pure white
        x0, y0, x1, y1 = letterbox_box(w, h, size)
        pad = np.ones((size, size), bool)
        pad[y0:y1, x0:x1] = False
        assert (g.pixels[pad] == 255).all()


def test_sample_drawings_match_pillow(tmp_path: Path) -> None:
    """Real pictures: the sample corpus' drawings (hard edges, flat colours) saved as JPEG."""
    from conftest import sample_images

    paths = []
    for i, src in enumerate(sample_images(2)):
        with Image.open(src) as img:
            paths.append(_jpeg(tmp_path / f"{i}.jpg", np.asarray(img.convert("RGB"))))
    got, ref = _both(paths, 64)
    for g, r in zip(got, ref, strict=True):
        mean, worst = _levels(g.pixels, r.pixels)
        assert mean < MEAN_LEVELS and worst <= MAX_LEVELS, (g.path, mean, worst)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_comes_out_upright_like_pillow(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _jpeg(tmp_path / "o.jpg", _picture(320, 200), exif=exif.tobytes())
    (g,), (r,) = _both([path], 64)
    assert g.info == r.info  # upright size: 200x320 for the orientations that turn the picture
    assert (g.info.width, g.info.height) == ((200, 320) if orientation >= 5 else (320, 200))
    mean, worst = _levels(g.pixels, r.pixels)
    assert mean < MEAN_LEVELS and worst <= MAX_LEVELS, (orientation, mean, worst)


def test_upright_is_pillows_transpose() -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
    for method in Image.Transpose:
        want = np.asarray(Image.fromarray(arr).transpose(method))
        got = upright(torch.from_numpy(arr).permute(2, 0, 1), method).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want, err_msg=str(method))


@pytest.fixture
def pillow_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that encoder/gpu_decode.py hands to the Pillow path (the real one, only watched)."""
    seen: list[str] = []
    real = gpu_decode._decode_one

    def watched(job):
        seen.append(job[1])
        return real(job)

    monkeypatch.setattr(gpu_decode, "_decode_one", watched)
    return seen


def test_greyscale_and_progressive_jpegs_are_decoded_by_torchvision_like_pillow(
    tmp_path: Path, pillow_fallbacks: list[str]
) -> None:
    grey = _jpeg(tmp_path / "grey.jpg", _picture(300, 200), mode="L")
    progressive = _jpeg(tmp_path / "progressive.jpg", _picture(300, 200), progressive=True, optimize=True)
    got, ref = _both([grey, progressive], 64)
    assert pillow_fallbacks == []  # neither went to Pillow
    for g, r in zip(got, ref, strict=True):
        assert g.error is None and g.info == r.info
        mean, worst = _levels(g.pixels, r.pixels)
        assert mean < MEAN_LEVELS and worst <= MAX_LEVELS
    assert (got[0].pixels[..., 0] == got[0].pixels[..., 1]).all()
    assert (got[0].pixels[..., 1] == got[0].pixels[..., 2]).all()


def test_cmyk_jpeg_and_png_go_through_pillow_unchanged(tmp_path: Path, pillow_fallbacks: list[str]) -> None:
    cmyk = _jpeg(tmp_path / "cmyk.jpg", _picture(200, 150), mode="CMYK")
    png = tmp_path / "p.png"
    Image.fromarray(_picture(90, 120)).save(png)
    got, ref = _both([cmyk, png], 64)
    assert sorted(pillow_fallbacks) == sorted([str(cmyk), str(png)])  # the reading threads hand them over in any order
    for g, r in zip(got, ref, strict=True):
        assert g.error is None and g.info == r.info
        np.testing.assert_array_equal(g.pixels, r.pixels)  # the very same decoder: byte for byte


def test_bad_files_fail_with_pillows_error(tmp_path: Path) -> None:
    whole = _jpeg(tmp_path / "whole.jpg", _picture(200, 150)).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a picture at all")
    big = _jpeg(tmp_path / "big.jpg", _picture(400, 300))
    missing = tmp_path / "missing.jpg"
    paths = [truncated, empty, garbage, big, missing]
    got, ref = _both(paths, 64, max_pixels=100_000)  # big.jpg is 120,000 pixels: over this cap
    for g, r in zip(got, ref, strict=True):
        assert g.pixels is None and g.error == r.error and g.failure == r.failure, (g, r)
    assert "truncated" in got[0].error and "empty file" in got[1].error
    assert "not a recognised image" in got[2].error and "over the limit of 100,000" in got[3].error


def test_order_is_kept_across_batches_and_fallbacks(tmp_path: Path) -> None:
    paths = []
    for i in range(11):
        if i % 4 == 1:
            p = tmp_path / f"{i:02d}.png"
            Image.fromarray(_picture(50 + i, 40, i)).save(p)
        elif i % 4 == 3:
            p = tmp_path / f"{i:02d}.jpg"
            p.write_bytes(b"\xff\xd8 broken")
        else:
            p = _jpeg(tmp_path / f"{i:02d}.jpg", _picture(60 + 7 * i, 50, i))
        paths.append(p)
    got = list(decode_many_jpeg(paths, 32, device="cpu", workers=3, batch=2, prefetch=2))
    ref = list(decode_many(paths, 32, workers=0))
    assert [d.path for d in got] == [str(p) for p in paths]
    assert [d.error for d in got] == [d.error for d in ref]
    assert sum(d.error is not None for d in got) == 2


def test_a_batch_the_decoder_rejects_costs_only_its_bad_file(tmp_path: Path, pillow_fallbacks: list[str]) -> None:
    """A file that looks like a plain JPEG but that libjpeg refuses: the batch is retried file by
    file, the good ones still decode with torchvision, the bad one gets Pillow's verdict."""
    good = _jpeg(tmp_path / "good.jpg", _picture(120, 90))
    data = bytearray(good.read_bytes())
    sos = data.index(b"\xff\xda")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(bytes(data[:sos]) + b"\xff\xd9")  # a header and no scan at all, but an end marker
    got, ref = _both([good, bad, good], 32)
    assert pillow_fallbacks == [str(bad)]
    assert got[0].error is None and got[2].error is None
    assert got[1].error == ref[1].error and got[1].error is not None


def test_letterbox_tensors_geometry() -> None:
    x = torch.full((3, 30, 90), 7, dtype=torch.uint8)
    out = letterbox_tensors([x], 60)
    assert out.shape == (1, 60, 60, 3)
    x0, y0, x1, y1 = letterbox_box(90, 30, 60)
    assert (out[0, y0:y1, x0:x1] == 7).all()
    assert int((out[0] == 255).all(dim=-1).sum()) == 60 * 60 - (x1 - x0) * (y1 - y0)


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert wants_gpu_decode(cuda) and not wants_gpu_decode(cpu)
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert not wants_gpu_decode(cuda) and not wants_gpu_decode(cpu)
    monkeypatch.setenv(ENV_SWITCH, "1")
    assert wants_gpu_decode(cuda) and wants_gpu_decode(cpu)
    monkeypatch.setenv(ENV_SWITCH, "maybe")
    with pytest.raises(ValueError, match=ENV_SWITCH):
        wants_gpu_decode(cuda)


# ---------------------------------------------------------------- the distributor and the encoder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained default-config model: which path decodes does not depend on the weights."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_model(create_model(ModelConfig()), out, {"note": "untrained, tests/encoder/test_gpu_decode.py"})
    return out


@pytest.fixture
def jpeg_folder(tmp_path: Path) -> list[str]:
    paths = [str(_jpeg(tmp_path / f"{i}.jpg", _picture(160 + 40 * i, 120, i))) for i in range(5)]
    (tmp_path / "bad.jpg").write_bytes(b"")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    return paths


class _Spy:
    """Counts calls of a real function and passes them on."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        return self.fn(*args, **kw)


def _spy_decoders(monkeypatch: pytest.MonkeyPatch) -> tuple[_Spy, _Spy]:
    pillow, jpeg = _Spy(distribute.decode_many), _Spy(distribute.decode_many_jpeg)
    monkeypatch.setattr(distribute, "decode_many", pillow)
    monkeypatch.setattr(distribute, "decode_many_jpeg", jpeg)
    return pillow, jpeg


def test_cpu_encoder_keeps_the_pillow_path(
    model_dir: Path, jpeg_folder: list[str], monkeypatch: pytest.MonkeyPatch, torch_one_thread
) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    pillow, jpeg = _spy_decoders(monkeypatch)
    encoder = Encoder(model_dir, "cpu")
    assert not encoder.fast_cuda
    results = list(ThreadDistributor(workers=2).embed(encoder, make_shards(jpeg_folder, 4), DEFAULT_MAX_PIXELS))
    assert (pillow.calls, jpeg.calls) == (1, 0)
    good = [p for p in jpeg_folder if not p.endswith("bad.jpg")]
    np.testing.assert_array_equal(np.concatenate([r.vectors for r in results]), encoder.embed(good))


def test_forced_torchvision_decode_indexes_like_pillow(
    model_dir: Path, jpeg_folder: list[str], monkeypatch: pytest.MonkeyPatch, torch_one_thread
) -> None:
    """The product path of a GPU machine, with torchvision's decoder on the CPU: the same files
    embedded, the same errors, vectors within float noise of the Pillow path's."""
    monkeypatch.setenv(ENV_SWITCH, "1")
    pillow, jpeg = _spy_decoders(monkeypatch)
    encoder = Encoder(model_dir, "cpu")
    results = list(ThreadDistributor(workers=2).embed(encoder, make_shards(jpeg_folder, 4), DEFAULT_MAX_PIXELS))
    assert (pillow.calls, jpeg.calls) == (0, 1)
    errors = [e for r in results for e in r.errors]
    assert [i for r in results for i in r.indexes] == list(range(len(jpeg_folder)))
    assert errors[2] is not None and "empty file" in errors[2] and sum(e is None for e in errors) == 5
    good = [p for p in jpeg_folder if not p.endswith("bad.jpg")]
    cos = (np.concatenate([r.vectors for r in results]) * encoder.embed(good)).sum(axis=1)
    assert cos.min() > 0.99, cos
    # and the switch off wins over a CUDA encoder's default: gpu_decode=False is Pillow's path
    list(ThreadDistributor(workers=2, gpu_decode=False).embed(encoder, make_shards(good, 5), DEFAULT_MAX_PIXELS))
    assert (pillow.calls, jpeg.calls) == (1, 1)


def test_cpu_embedding_is_plain_fp32(model_dir: Path, torch_one_thread) -> None:
    """The CPU path computes exactly what it always did: fp32, no autocast, default memory layout."""
    encoder = Encoder(model_dir, "cpu")
    pixels = np.stack([_picture(64, 64, i) for i in range(3)])
    with torch.inference_mode():
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
        z = torch.nn.functional.normalize(encoder.model.encode(x).float(), dim=1).numpy()
    np.testing.assert_array_equal(encoder.embed_pixels(pixels), z)


@cuda_only
def test_cuda_embeds_in_bf16_channels_last_close_to_fp32(model_dir: Path) -> None:
    gpu, cpu = Encoder(model_dir, "cuda"), Encoder(model_dir, "cpu")
    assert gpu.fast_cuda and not cpu.fast_cuda
    conv = next(m for m in gpu.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    pixels = np.stack([_picture(64, 64, i) for i in range(8)])
    a, b = gpu.embed_pixels(pixels), cpu.embed_pixels(pixels)
    assert a.dtype == np.float32 and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert (a * b).sum(axis=1).min() > 0.99  # bf16 rounding, not a different picture


@cuda_only
def test_nvjpeg_matches_the_cpu_decoder(tmp_path: Path) -> None:
    paths = [_jpeg(tmp_path / f"{i}.jpg", _picture(200 + 60 * i, 150, i)) for i in range(4)]
    on_gpu = list(decode_many_jpeg(paths, 64, device="cuda"))
    on_cpu = list(decode_many_jpeg(paths, 64, device="cpu"))
    for g, c in zip(on_gpu, on_cpu, strict=True):
        mean, worst = _levels(g.pixels, c.pixels)
        assert g.info == c.info and mean < 1.0 and worst <= 8  # nvJPEG's IDCT differs from libjpeg's in the last bit


def test_decoded_bytes_are_what_the_file_holds(tmp_path: Path) -> None:
    """The reading thread hands torchvision the file's bytes unchanged (a JPEG in memory decodes the same)."""
    arr = _picture(80, 60)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    path = tmp_path / "m.jpg"
    path.write_bytes(buf.getvalue())
    (g,) = list(decode_many_jpeg([path], 80, device="cpu", workers=1))
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        want = np.asarray(img.convert("RGB"))
    pad = letterbox_box(80, 60, 80)
    assert _levels(g.pixels[pad[1] : pad[3], pad[0] : pad[2]], want)[0] < 1.0
