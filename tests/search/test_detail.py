"""The detail check: two drawings that differ only in a small sign hash alike (the old rule,
a whole-picture hash match, grouped them) and are told apart; the edits a near-duplicate may
have (resize 50%/25%, JPEG q30/q60, brightness x0.8/x1.25, greyscale) are not; and the report
groups an original with its copies but not with its variant."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from encoder.images import letterbox_box, load_image_with_info
from search.engine import Engine
from search.reports import NearDuplicates, Tier, near_duplicates
from search.reports.detail import DETAIL_LIMIT, SIDE, Details, detail_distance, detail_thumbnails
from search.reports.scan import hamming, perceptual_hash, scan_images

SIZE = 64


def _drawing(sign: str) -> Image.Image:
    """A flat drawing (a house on white) with a small black sign in one corner, "T" or "L":
    the only difference between the two variants, as a letter is between Tux Paint's dreidels."""
    img = Image.new("RGB", (240, 200), (250, 250, 250))
    d = ImageDraw.Draw(img)
    d.polygon([(30, 190), (30, 80), (120, 20), (210, 80), (210, 190)], fill=(40, 170, 200), outline=(0, 0, 0))
    d.rectangle((60, 110, 110, 160), fill=(230, 220, 90), outline=(0, 0, 0))
    if sign == "T":
        d.rectangle((12, 12, 44, 20), fill=(0, 0, 0))
        d.rectangle((24, 12, 32, 46), fill=(0, 0, 0))
    else:
        d.rectangle((12, 12, 20, 46), fill=(0, 0, 0))
        d.rectangle((12, 38, 44, 46), fill=(0, 0, 0))
    return img


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "resize25": lambda im: im.resize((im.width // 4, im.height // 4), Image.Resampling.LANCZOS),
    "bright80": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "bright125": lambda im: ImageEnhance.Brightness(im).enhance(1.25),
    "grey": lambda im: im.convert("L").convert("RGB"),
}


@pytest.fixture(scope="module")
def drawings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{name: file}: the two variants, and the T drawing's edited copies."""
    base = tmp_path_factory.mktemp("drawings")
    out = {}
    for sign in ("T", "L"):
        out[sign] = base / f"sign-{sign}.png"
        _drawing(sign).save(out[sign])
    original = _drawing("T")
    for name, edit in EDITS.items():
        out[name] = base / f"sign-T-{name}.png"
        edit(original).save(out[name])
    for q in (30, 60):
        out[f"jpeg{q}"] = base / f"sign-T-q{q}.jpg"
        original.save(out[f"jpeg{q}"], quality=q)
    return out


def _prepared(paths: list[Path]) -> tuple[np.ndarray, Details]:
    """(64-bit hashes, prepared thumbnails) of `paths`, as the scan makes them."""
    pixels, sizes = [], []
    for p in paths:
        px, info = load_image_with_info(p, SIZE)
        pixels.append(px)
        sizes.append((info.width, info.height))
    stack = np.stack(pixels)
    thumbs = detail_thumbnails(stack, [letterbox_box(w, h, SIZE) for w, h in sizes])
    assert thumbs.shape == (len(paths), SIDE, SIDE) and thumbs.dtype == np.uint8
    return perceptual_hash(stack), Details(thumbs, np.array([min(s) for s in sizes]))


def _copy_in(folder: Path, drawings: dict[str, Path], names: tuple[str, ...]) -> None:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / drawings[name].name).write_bytes(drawings[name].read_bytes())


def _members(near: NearDuplicates, tier: str) -> list[set[int]]:
    """Each group of `tier` as the set of its members' ids."""
    return [{m.id for m in g.members} for g in near.groups[tier]]


def test_variants_that_hash_alike_differ_in_detail_and_edits_do_not(drawings: dict[str, Path]) -> None:
    names = list(drawings)
    codes, details = _prepared([drawings[n] for n in names])
    t, v = names.index("T"), names.index("L")
    # the premise: the whole-picture hash cannot tell the variants apart (the old rule grouped them)
    assert hamming(codes[[t]], codes[[v]])[0] <= 8
    assert detail_distance(details, np.array([t]), np.array([v]))[0] > 2 * DETAIL_LIMIT
    edits = [k for k, n in enumerate(names) if n not in ("T", "L")]
    assert len(edits) == 7
    to_original = detail_distance(details, np.full(len(edits), t), np.array(edits))
    assert (to_original <= DETAIL_LIMIT).all(), dict(zip([names[k] for k in edits], to_original.round(2), strict=True))
    # every edit stays as far from the other variant as the original is
    to_variant = detail_distance(details, np.full(len(edits), v), np.array(edits))
    assert (to_variant > DETAIL_LIMIT).all()


def test_the_distance_is_symmetric_zero_on_itself_and_ignores_a_tone_curve() -> None:
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (3, SIDE, SIDE)).astype(np.uint8)
    curved = (255 * (pic[0] / 255.0) ** 2.2).astype(np.uint8)  # gamma: monotone, far from linear
    details = Details(np.concatenate([pic, curved[None]]), np.full(4, 500))
    a, b = np.array([0, 1, 0, 0]), np.array([1, 0, 0, 3])
    d = detail_distance(details, a, b)
    assert d[0] == pytest.approx(d[1]) and d[0] > 1.0  # unrelated noise pictures: far, either way round
    assert d[2] == 0.0
    assert d[3] < 0.15


def test_small_pictures_are_compared_at_their_own_resolution() -> None:
    details = Details(np.zeros((3, SIDE, SIDE), np.uint8), np.array([500, 12, 0]))
    assert details.level_of(np.array([0, 0, 0]), np.array([0, 1, 2])).tolist() == [16, 8, 16]  # 0: unknown


def test_the_report_groups_copies_but_not_the_variant(
    drawings: dict[str, Path], tmp_path: Path, make_index: Callable[[Path], Path]
) -> None:
    folder = tmp_path / "images"
    _copy_in(folder, drawings, ("T", "L", "resize50", "jpeg60"))
    engine = Engine(make_index(folder))
    try:
        ids = {n: engine.get_by_path(drawings[n].name).id for n in ("T", "L", "resize50", "jpeg60")}
        scan = scan_images(engine, workers=1, cache=False)
        assert scan.details is not None and scan.details.shape == (4, SIDE, SIDE)
        tier = Tier("t", 1.01, hamming=8)  # no cosine passes 1.01: the hashes alone decide
        near = near_duplicates(engine, (tier,), scan=scan)
        groups = _members(near, "t")
        assert groups == [{ids["T"], ids["resize50"], ids["jpeg60"]}]
    finally:
        engine.close()


def test_on_one_canvas_different_detail_overrules_the_cosine(
    drawings: dict[str, Path], tmp_path: Path, make_index: Callable[[Path], Path]
) -> None:
    """A tier that vetoes on detail and whose cosine admits every pair: the two variants share
    one 240x200 PNG canvas, so nothing that blurs detail stands between them, and their different
    detail keeps them apart, as it does the L variant and the T drawing's brightened copy (that
    canvas too); the T drawing and that copy agree in detail and are grouped, and a 50% copy
    (another canvas, never the keeper) is left to the cosine."""
    folder = tmp_path / "images"
    groups = {}
    for names in (("T", "L", "bright125"), ("T", "L", "bright125", "resize50")):
        _copy_in(folder, drawings, names)
        engine = Engine(make_index(folder))
        try:
            ids = {n: engine.get_by_path(drawings[n].name).id for n in names}
            scan = scan_images(engine, workers=1, cache=False)
            near = near_duplicates(engine, (Tier("t", -1.0, hamming=8, detail_veto=True),), scan=scan)
            groups[names] = found = _members(near, "t")
            assert any({ids["T"], ids["bright125"]} <= g for g in found), found
            for g in found:
                assert not {ids["T"], ids["L"]} <= g and not {ids["L"], ids["bright125"]} <= g, found
        finally:
            engine.close()
    assert groups[("T", "L", "bright125")] == [{ids["T"], ids["bright125"]}]
    # Without the veto (the "similar" tier: variants are similar) the cosine groups them all.
    engine = Engine(make_index(folder))
    try:
        near = near_duplicates(engine, (Tier("t", -1.0, hamming=8),), scan=scan_images(engine, workers=1, cache=False))
        assert _members(near, "t") == [set(ids.values())]
    finally:
        engine.close()
    assert any(ids["resize50"] in g for g in groups[("T", "L", "bright125", "resize50")])  # by its cosine


def test_a_pair_the_stricter_tier_vetoes_must_stand_out_from_its_crowd_at_a_looser_one(
    drawings: dict[str, Path], tmp_path: Path, make_index: Callable[[Path], Path]
) -> None:
    """Tiers nest: a pair the stricter tier passes passes a looser one whatever its crowd. A
    pair the stricter tier *vetoes* (one canvas, different detail) is not passed there, so at
    the looser tier it is a cosine match like any other and must stand out from its crowd (here
    a margin no cosine can reach): the two variants are not grouped, the T drawing and its
    brightened copy still are (passed by the stricter tier)."""
    folder = tmp_path / "images"
    names = ("T", "L", "bright125")
    _copy_in(folder, drawings, names)
    engine = Engine(make_index(folder))
    try:
        ids = {n: engine.get_by_path(drawings[n].name).id for n in names}
        scan = scan_images(engine, workers=1, cache=False)
        strict = Tier("strict", -0.99, hamming=8, detail_veto=True)
        loose = Tier("loose", -1.0, hamming=8, crowd_margin=2.0)
        near = near_duplicates(engine, (strict, loose), scan=scan)
        assert _members(near, "strict") == [{ids["T"], ids["bright125"]}]
        assert near.groups["loose"] == []  # nothing added: the variant stays out
        # no margin at the looser tier: its cosine admits the variant, as a similar picture
        near = near_duplicates(engine, (strict, Tier("loose", -1.0, hamming=8)), scan=scan)
        assert _members(near, "loose") == [set(ids.values())]
    finally:
        engine.close()
