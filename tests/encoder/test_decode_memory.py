"""One decode of an image at the pixel cap stays small in memory, whatever its mode (issue 14).

Each worst-case file (8000 x 8000 = DEFAULT_MAX_PIXELS, a gradient of one value a row, so a
few kilobytes to a few megabytes on disk) is decoded as an upload is, `load_image(bytes, 64)`,
in a fresh process; the peak RSS growth over the decode (VmHWM after, VmRSS before, the peak
reset through /proc/self/clear_refs) must stay within 300 MB. Before the fix a 16-bit PNG
took 1.4 GB and an RGBA PNG 0.8 GB. The decoded pixels must still be the gradient.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoder.images import DEFAULT_MAX_PIXELS

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")

SIDE = 8000
LIMIT_MB = 300
SIZE = 64

#: mode -> (format, save options)
CASES = {
    "1": ("PNG", {}),
    "L": ("PNG", {}),
    "LA": ("PNG", {}),
    "P": ("PNG", {"transparency": 255}),  # a palette entry the gradient never uses
    "PA": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "RGB": ("PNG", {}),
    "RGBA": ("PNG", {}),
    "CMYK": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "YCbCr": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "I;16": ("PNG", {}),
    "I;16B": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "I": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "F": ("TIFF", {"compression": "tiff_adobe_deflate"}),
}


def _gradient(mode: str) -> Image.Image:
    """SIDE x SIDE, darkest at the top, brightest at the bottom, one value a row."""
    y = np.arange(SIDE, dtype=np.int64)

    def rows(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(values[:, None], (SIDE, SIDE)))

    if mode in ("I;16", "I;16B"):
        arr = rows((y * 65535 // (SIDE - 1)).astype("<u2" if mode == "I;16" else ">u2"))
        return Image.frombuffer(mode, (SIDE, SIDE), arr, "raw", mode, 0, 1)
    if mode == "I":
        return Image.fromarray(rows((y * 65535 // (SIDE - 1)).astype(np.int32)))
    if mode == "F":
        return Image.fromarray(rows((y / (SIDE - 1)).astype(np.float32)))
    grey = Image.fromarray(rows((y * 255 // (SIDE - 1)).astype(np.uint8)))
    if mode == "L":
        return grey
    if mode == "1":
        return grey.convert("1", dither=Image.Dither.NONE)
    if mode in ("P", "PA"):  # grey palette entries 0..254; 255 is left for the transparent one
        pal = Image.frombytes("P", (SIDE, SIDE), rows((y * 254 // (SIDE - 1)).astype(np.uint8)).tobytes())
        pal.putpalette([round(i * 255 / 254) for i in range(255) for _ in range(3)] + [255, 0, 0])
        return pal.convert("PA") if mode == "PA" else pal
    return grey.convert(mode)


@pytest.fixture(scope="session")
def worst_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    assert SIDE * SIDE == DEFAULT_MAX_PIXELS  # the files sit exactly at the cap
    folder = tmp_path_factory.mktemp("worst-case-images")
    out = {}
    for mode, (fmt, opts) in CASES.items():
        path = folder / f"{mode.replace(';', '')}.{fmt.lower()}"
        _gradient(mode).save(path, fmt, **opts)
        out[mode] = path
    return out


CHILD = r"""
import json, sys, time
import numpy as np
from PIL import Image
from encoder.images import load_image

def status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            d[k] = int(v.split()[0]) / 1024 if v.strip().endswith("kB") else 0
    return d["VmRSS"], d["VmHWM"]

Image.init()
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
base, _ = status()
t0 = time.perf_counter()
arr = load_image(data, int(sys.argv[2]))
seconds = time.perf_counter() - t0
_, peak = status()
print(json.dumps({"growth_mb": peak - base, "seconds": seconds, "shape": arr.shape, "column": arr[:, 32].tolist()}))
"""


def _decode_in_child(path: Path) -> dict:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(SIZE)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", list(CASES))
def test_one_decode_at_the_pixel_cap_stays_small(worst_cases: dict[str, Path], mode: str) -> None:
    got = _decode_in_child(worst_cases[mode])
    assert got["growth_mb"] <= LIMIT_MB, f"{mode}: decoding took {got['growth_mb']:.0f} MB (limit {LIMIT_MB})"
    assert tuple(got["shape"]) == (SIZE, SIZE, 3)
    column = np.array(got["column"])  # (SIZE, 3) down the middle: the gradient, grey
    assert (column.max(axis=1) - column.min(axis=1) <= 2).all(), f"{mode}: not grey: {column.tolist()}"
    grey = column[:, 0].astype(int)
    assert (np.diff(grey) >= 0).all(), f"{mode}: not a gradient: {grey.tolist()}"
    if mode == "1":  # black above the middle, white below
        assert grey[0] == 0 and grey[-1] == 255
        return
    # Output row r averages source rows around (r + 0.5) / SIZE of the way down.
    expected = (np.arange(SIZE) + 0.5) / SIZE * 255
    tolerance = 8 if mode in ("P", "PA", "CMYK", "YCbCr") else 2  # a palette's steps; colour round trips
    assert np.abs(grey - expected).max() <= tolerance, f"{mode}: {grey.tolist()}"


def test_sixteen_bit_gradient_becomes_the_right_eight_bit_gradient() -> None:
    """Every 8-bit level: 16-bit v becomes v // 257, as it always did (full size, no reduction)."""
    from encoder.images import load_image

    ramp = (np.arange(256 * 4, dtype=np.uint32) * 65535 // (256 * 4 - 1)).astype("<u2")
    img = Image.frombuffer("I;16", (1, ramp.size), np.ascontiguousarray(ramp[:, None]), "raw", "I;16", 0, 1)
    tall = img.resize((ramp.size, ramp.size), Image.Resampling.NEAREST)
    arr = load_image(_png_bytes(tall), ramp.size)
    assert (arr[:, 0, 0] == ramp // 257).all()


def _png_bytes(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
