"""Crop hashes: a copy cut down by 8-10% at any place is close to one of the original's
windows, unrelated pictures are not; they are cached with the scan; and a near-duplicate
tier with `crop_hamming` groups a crop that neither the vectors nor the whole hash join."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoder.images import load_image_with_info
from search.engine import Engine
from search.reports import CACHE_FILE, Tier, near_duplicates
from search.reports.detail import SIDE as DETAIL_SIDE
from search.reports.scan import CROP_HASHES, ScanCache, crop_distance, crop_hashes, hamming, scan_images

SIZE = 64


def _hashes(paths: list[Path]) -> np.ndarray:
    pixels, sizes = [], []
    for p in paths:
        px, info = load_image_with_info(p, SIZE)
        pixels.append(px)
        sizes.append((info.width, info.height))
    return crop_hashes(np.stack(pixels), sizes)


def _crop(src: Path, dst: Path, frac: float, corner: tuple[float, float]) -> Path:
    """`src` with `frac` of its width and height cut away, the rest placed at `corner` (0-1 each way)."""
    img = Image.open(src).convert("RGB")
    w, h = img.size
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    x0, y0 = round(corner[0] * (w - cw)), round(corner[1] * (h - ch))
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.crop((x0, y0, x0 + cw, y0 + ch)).save(dst)
    return dst


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Wide 'photographs' with detail at every scale (so a crop changes the whole-picture hash)."""
    rng = np.random.default_rng(3)
    out = []
    base = tmp_path_factory.mktemp("photos")
    for n in range(12):
        coarse = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
        fine = rng.integers(-40, 40, (60, 90, 3))
        img = np.asarray(Image.fromarray(coarse).resize((90, 60), Image.Resampling.BICUBIC), dtype=np.int64)
        pic = Image.fromarray(np.clip(img + fine, 0, 255).astype(np.uint8)).resize((360, 240), Image.Resampling.BICUBIC)
        path = base / f"photo{n:02d}.png"
        pic.save(path)
        out.append(path)
    return out


def test_a_crop_anywhere_is_close_to_a_window_of_its_original(photos: list[Path], tmp_path: Path) -> None:
    corners = [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5), (0.3, 0.8)]
    crops = [_crop(photos[0], tmp_path / f"crop{n}.png", 0.08 + 0.004 * n, c) for n, c in enumerate(corners)]
    codes = _hashes([photos[0], *crops, *photos[1:]])
    assert codes.shape == (len(codes), CROP_HASHES)
    orig = np.broadcast_to(codes[0], codes.shape)
    to_crops = crop_distance(orig[1 : 1 + len(crops)], codes[1 : 1 + len(crops)])
    whole = hamming(codes[0, 0].repeat(len(crops)), codes[1 : 1 + len(crops), 0])
    assert to_crops.max() <= 6, to_crops
    assert whole.mean() > to_crops.mean() + 4  # the windows are what finds them
    unrelated = crop_distance(orig[1 + len(crops) :], codes[1 + len(crops) :])
    assert unrelated.min() >= 12, unrelated
    # the distance is symmetric: the crop's whole picture against the original's windows
    assert (crop_distance(codes[1 : 1 + len(crops)], orig[1 : 1 + len(crops)]) == to_crops).all()


def test_letterbox_padding_is_left_out_of_the_picture_hash(photos: list[Path], tmp_path: Path) -> None:
    """A wide picture and its crop pad differently in the model's square; the crop hashes see
    only the picture."""
    from encoder.images import letterbox_box

    assert letterbox_box(360, 240, 64) == (0, 10, 64, 53)  # 43 rows of picture
    assert letterbox_box(240, 360, 64) == (10, 0, 53, 64)
    assert letterbox_box(50, 50, 64) == (0, 0, 64, 64)
    px, info = load_image_with_info(photos[0], SIZE)
    padded = crop_hashes(px[None], [(info.width, info.height)])
    as_square = crop_hashes(px[None], [(SIZE, SIZE)])  # told, wrongly, that there is no padding
    assert hamming(padded[:, 0], as_square[:, 0])[0] > 0


def test_missing_hashes_are_far_from_everything() -> None:
    a = np.full((2, CROP_HASHES), -1, dtype=np.int64)
    b = np.zeros((2, CROP_HASHES), dtype=np.int64)
    assert (crop_distance(a, b) == 255).all()
    assert len(crop_distance(a[:0], b[:0])) == 0


def test_the_cache_keeps_crop_hashes_and_ignores_another_layout(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    store = ScanCache(path)
    crops = np.arange(CROP_HASHES, dtype=np.int64) - 3
    thumb = np.arange(DETAIL_SIDE**2, dtype=np.uint8).reshape(DETAIL_SIDE, DETAIL_SIDE)
    vec = np.linspace(-1, 1, 5, dtype=np.float32)
    store.put("m", {"h1": (0.5, 7, crops, thumb, vec)})
    store.close()
    with sqlite3.connect(path) as conn:  # rows written with another number of windows, pixels or dimensions
        row = f"INSERT INTO {ScanCache.TABLE} VALUES (?, 'm', 0.1, 1, ?, ?, ?)"
        conn.execute(row, ("h2", b"\0" * 16, thumb.tobytes(), vec.tobytes()))
        conn.execute(row, ("h3", crops.tobytes(), b"\0" * 64, vec.tobytes()))
        conn.execute(row, ("h4", crops.tobytes(), thumb.tobytes(), vec[:4].tobytes()))
    store = ScanCache(path)
    got = store.get("m", ["h1", "h2", "h3", "h4"], dim=5)
    without = store.get("m", ["h1"])  # asked for no copy vectors: a row that has one is another layout
    store.close()
    assert list(got) == ["h1"] and without == {}
    score, phash, back, back_thumb, back_vec = got["h1"]
    assert (score, phash) == (0.5, 7) and (back == crops).all() and (back_thumb == thumb).all()
    assert back_vec is not None and np.array_equal(back_vec, vec)


def test_a_cache_from_before_detail_thumbnails_is_scanned_again(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    with sqlite3.connect(path) as conn:  # the previous layout: no detail column
        conn.execute(
            "CREATE TABLE scan_v2 (content_hash TEXT NOT NULL, model_id TEXT NOT NULL, score REAL NOT NULL, "
            "phash INTEGER NOT NULL, crops BLOB NOT NULL, PRIMARY KEY (content_hash, model_id))"
        )
        conn.execute("INSERT INTO scan_v2 VALUES ('h1', 'm', 0.5, 7, ?)", (np.zeros(CROP_HASHES, "<i8").tobytes(),))
    store = ScanCache(path)
    try:
        assert ScanCache.TABLE != "scan_v2" and store.get("m", ["h1"]) == {}
    finally:
        store.close()


def test_a_tier_with_crop_hamming_groups_a_crop_the_whole_hash_misses(
    photos: list[Path], tmp_path: Path, make_index: Callable[[Path], Path]
) -> None:
    folder = tmp_path / "images"
    for p in photos:
        folder.mkdir(exist_ok=True)
        shutil.copy(p, folder / p.name)
    _crop(photos[4], folder / "copies" / "photo04-cropped.png", 0.09, (0.8, 0.2))
    engine = Engine(make_index(folder))
    try:
        orig_id, crop_id = engine.get_by_path("photo04.png").id, engine.get_by_path("copies/photo04-cropped.png").id
        scan = scan_images(engine, workers=1)
        assert scan.crops is not None and scan.crops.shape == (len(scan.ids), CROP_HASHES)
        whole = hamming(*[scan.phashes[scan.ids == i] for i in (orig_id, crop_id)])[0]
        assert whole > 6  # the whole-picture hash alone would not join them at 6 bits

        def groups(tier: Tier) -> list[set[int]]:
            near = near_duplicates(engine, (tier,), scan=scan)
            return [{m.id for m in g.members} for g in near.groups[tier.name]]

        with_crops = Tier("t", 1.01, hamming=6, crop_hamming=6)  # no cosine passes 1.01
        assert {orig_id, crop_id} in groups(with_crops)
        member = next(
            m
            for g in near_duplicates(engine, (with_crops,), scan=scan).groups["t"]
            for m in g.members
            if m.id == crop_id
        )
        assert member.hamming is not None and member.hamming <= 6  # shown as the tier counts it
        assert not groups(Tier("t", 1.01, hamming=6))  # without crop hashes: nothing
    finally:
        engine.close()
