"""The perceptual-hash side of the near-duplicate report: each image's hashes and detail
thumbnail from the scan, the tiers' hash distances capped at what this collection's hashes can
tell apart, crop distances of candidate pairs, and the "same canvas" key (pixel size and format)
that the detail veto asks about. The vectors' side, and how tiers and groups are formed, is
:mod:`.duplicates`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from ..engine import Engine
from .detail import SIDE as DETAIL_SIDE
from .model import Member, Tier
from .scan import CROP_HASH_MARGIN, CROP_HASHES, NO_HASH, Scan, crop_distance, hamming, hash_distance_limit, scan_images

log = logging.getLogger(__name__)

#: Below this cap (1% of unrelated pairs within 17 bits) a hash says too little to use at
#: all. Hash distances are almost always even (a hash has 32 of its 64 bits set unless DCT
#: coefficients tie at their median, as on flat pictures), so the per-collection caps come
#: in steps of 2. Measured over 20 (corpus, model) pairs of the cross-corpus benchmark (three
#: corpus seeds, product and shared models): MNIST digits' caps were 2 or 4 (1% of unrelated
#: digits within 14-16 bits; which one depended on the model), the photo and clip-art
#: corpora's 6 to 10. A floor of 4 let MNIST in with one model (119 false groups, up to 6
#: different digits); 6 is the step between the two. Crop hashes need at least that much
#: room anyway: an image and its 8-10% crop are ~4 bits apart at the best window.
MIN_HASH_LIMIT = 6


def hash_codes(engine: Engine, ids: np.ndarray, scan: Scan | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The perceptual hash, crop hashes and detail thumbnail of each of `ids` (NO_HASH where an
    image failed to decode; a flat grey thumbnail there, never compared since its hashes are
    missing). Thumbnails are None when the scan has none."""
    scan = scan if scan is not None else scan_images(engine)
    codes = np.full(len(ids), NO_HASH, dtype=np.int64)
    crops = np.full((len(ids), CROP_HASHES), NO_HASH, dtype=np.int64)
    thumbs = None if scan.details is None else np.full((len(ids), DETAIL_SIDE, DETAIL_SIDE), 128, dtype=np.uint8)
    where, found = scan.locate(ids)
    codes[found] = scan.phashes[where[found]]
    if scan.crops is not None:
        crops[found] = scan.crops[where[found]]
    if thumbs is not None and scan.details is not None:
        thumbs[found] = scan.details[where[found]]
    return codes, crops, thumbs


def canvases(ids: np.ndarray, rows: dict[int, Member], fmt: dict[int, str | None]) -> np.ndarray:
    """Per image a number, equal for two images of the same pixel size and file format; unique
    where either is unknown (never one canvas then: images outside `rows` among them)."""
    keys: dict[tuple, int] = {}
    out = np.empty(len(ids), dtype=np.int64)
    for n, x in enumerate(ids.tolist()):
        m = rows.get(x)
        known = m is not None and m.width and m.height and fmt.get(x)
        key = (m.width, m.height, fmt[x]) if known else ("unknown", n)
        out[n] = keys.setdefault(key, len(keys))
    return out


def picture_side(m: Member | None) -> int:
    """A picture's smaller side in pixels (0 when unknown: compared at full detail)."""
    return min(m.width or 0, m.height or 0) if m is not None else 0


def crop_distances(crops: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """:func:`.scan.crop_distance` of each pair, in chunks (n*k pairs x 18 comparisons)."""
    out = np.empty(len(i), dtype=np.int16)
    for a in range(0, len(i), chunk):
        out[a : a + chunk] = crop_distance(crops[i[a : a + chunk]], crops[j[a : a + chunk]])
    return out


def hash_tiers(tiers: tuple[Tier, ...], codes: np.ndarray, crops: np.ndarray, vecs: np.ndarray) -> tuple[Tier, ...]:
    """The tiers with their hash distances capped at what this collection's hashes can tell
    apart (:func:`.scan.hash_distance_limit`): judged on random pairs that neither hash calls
    a candidate copy, for the whole-picture hashes and the crop hashes each (the best of 18
    window comparisons is closer than one comparison for unrelated pictures too, so it gets
    its own cap)."""
    crop_pair = None if crops is None else (crops, crop_distance)
    limit = hash_distance_limit(codes, vectors=vecs, also=crop_pair)
    if limit is None:  # too few images to judge: the tiers as they are
        return tiers
    crop_limit = hash_distance_limit(
        crops, vectors=vecs, distance=crop_distance, margin=CROP_HASH_MARGIN, also=(codes, hamming)
    )
    crop_limit = limit if crop_limit is None else crop_limit
    off = limit < MIN_HASH_LIMIT
    crops_off = off or crop_limit < MIN_HASH_LIMIT  # hashes that cannot tell pictures apart cannot tell crops
    if off:
        log.info("perceptual hashes do not tell images apart in this collection: vectors only")
    return tuple(
        replace(
            t,
            hamming=None if t.hamming is None or off else min(t.hamming, limit),
            crop_hamming=None if t.crop_hamming is None or crops_off else min(t.crop_hamming, crop_limit),
        )
        for t in tiers
    )
