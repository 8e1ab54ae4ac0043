"""Whether two pictures whose perceptual hashes agree also agree in detail.

A 64-bit DCT hash sees an image at 8x8 frequencies. Pictures drawn as variants of one
another (Tux Paint's dreidels, which differ by one Hebrew letter; euro coins 10/20/50 that
differ by the number) hash within 2-6 bits, as close as real edits of one picture, so a
hash match alone put them in one "near-duplicate" group. This check compares what the hash
leaves out: a 16x16 grey thumbnail of each picture (:func:`detail_thumbnails`, made in the
scan's one decoding pass and cached with the hashes), one against the other.

The comparison (:func:`detail_distance`) is built to ignore what the edits a near-duplicate
may have change, and nothing else:

- **tone** (brightness x0.8 / x1.25 with clipping, greyscale, contrast): one thumbnail's grey
  levels are mapped onto the other's through their quantiles (the monotone curve that gives
  A the histogram of B) before they are compared, so any monotone change of tone leaves no
  residual;
- **resolution** (resize 50% / 25%, JPEG's blur): the two are compared at the finest of
  16, 8 and 4 px that neither picture is smaller than, so a 44 px copy of a 175 px stamp is
  not blamed for detail it never had;
- what remains is **where** they differ: the residual is measured in each of 4x4 blocks,
  and the worst block, relative to the picture's own contrast (standard deviation of its
  grey levels), is the distance. A changed letter or digit is a few blocks with a large
  residual; recompression spreads a small one over all of them.

The distance is the larger of the two directions (A mapped onto B, B onto A). A pair that the
whole-picture hash admits passes only when its distance is at most :data:`DETAIL_LIMIT`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

#: Side of the stored thumbnail, and the coarser levels a pair of small pictures is compared at.
SIDE = 16
LEVELS = (16, 8, 4)
_GRID = 4  # blocks per side at every level: 4x4, 2x2 or 1x1 px each
#: How far (thumbnail pixels, each way) a block may move to find its match: one picture's
#: content sits a pixel off the other's after a crop of 5-10% or a trimmed border (at 16 px,
#: a pixel is 6% of the picture), and each block takes its own shift, so a small change of
#: scale is absorbed too. A changed letter is not a shifted one: its block matches nowhere.
SHIFT = 1
#: The largest worst-block residual, in units of the picture's grey-level standard deviation,
#: that still counts as "the same detail". Tuned on the tuxpaint-edits corpus alone (three corpus
#: seeds, one model, bench/near_duplicates_cross.py) and reported on the others
#: (docs/benchmarks.md, "Near-duplicates across corpora"): 0.6 left a group of 9 around a family
#: of 7 (seed 2: a plain dreidel 0.59 from the lettered one that had become the keeper); 0.5 cost
#: core recall (0.89 on seed 0); 0.55 met every target there. Of the candidate pairs the whole
#: hash admits and the vectors do not, 0.55 turns away 20-36 of 36-52 pairs of different stamps
#: and 8-10 of 262-289 (original, edit) pairs (small pictures resized by 25%, near-blank ones
#: whose grey-level spread is noise); on wallpapers-edits, every one of 20-27 pairs of different
#: pictures and 1-2 of ~170 (original, edit) pairs.
DETAIL_LIMIT = 0.55


def detail_thumbnails(pixels: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """(N, S, S, 3) uint8 letterboxed pixels and each picture's box in them (the padding left
    out) -> (N, SIDE, SIDE) uint8: the picture in grey, averaged down to SIDE x SIDE (box
    filter: every source pixel counts once)."""
    out = np.empty((len(pixels), SIDE, SIDE), dtype=np.uint8)
    for n, (p, box) in enumerate(zip(pixels, boxes, strict=True)):
        grey = Image.fromarray(np.ascontiguousarray(p)).convert("L")
        out[n] = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX, box=box), dtype=np.uint8)
    return out


class Details:
    """The thumbnails (uint8, SIDE x SIDE each) and each picture's native side (the smaller of
    width and height, 0 when unknown: compared at full detail). What a comparison needs on top
    (:func:`_levels`: each level's grey levels, their ranks and sorted values, ~4 KB an image
    in float32) is made per chunk of pairs, for the images in it only, so memory stays at
    256 bytes an image however many pairs are compared."""

    def __init__(self, thumbs: np.ndarray, sides: np.ndarray) -> None:
        self.thumbs = np.asarray(thumbs, np.uint8).reshape(len(thumbs), SIDE, SIDE)
        self.sides = np.asarray(sides, np.int64)

    def __len__(self) -> int:
        return len(self.sides)

    def level_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(P,) the level each pair is compared at: the finest that neither picture is smaller than."""
        low = np.minimum(self.sides[a], self.sides[b])
        low = np.where(low <= 0, SIDE, low)
        out = np.full(len(low), LEVELS[-1], dtype=np.int64)
        for side in sorted(LEVELS):
            out[low >= side] = side
        return out


def _levels(thumbs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(N, SIDE, SIDE) thumbnails -> {level: (grey levels, their mid-ranks, sorted grey levels)},
    each (N, level*level) float32."""
    t = thumbs.astype(np.float32)
    out = {}
    for side in LEVELS:
        f = SIDE // side
        g = t.reshape(len(t), side, f, side, f).mean(axis=(2, 4)).reshape(len(t), side * side)
        order = np.sort(g, axis=1)
        n, m = g.shape
        if side == SIDE:  # whole grey levels: ranks by counting, 256 bins a row
            v = thumbs.reshape(n, m).astype(np.int64)
            counts = np.bincount((np.arange(n)[:, None] * 256 + v).ravel(), minlength=n * 256).reshape(n, 256)
            hi = np.take_along_axis(np.cumsum(counts, axis=1), v, 1)  # values <= each
            lo = hi - np.take_along_axis(counts, v, 1)  # values < each
        else:  # mid-rank among the row's values (ties share the middle of their run): one
            # searchsorted over all rows, each row's values offset past the previous row's
            shift = (np.arange(n, dtype=np.float64) * 512.0)[:, None]  # grey levels are < 256
            flat, keys = (order + shift).ravel(), (g + shift).ravel()
            base = np.arange(n)[:, None] * m
            lo = np.searchsorted(flat, keys, "left").reshape(n, m) - base
            hi = np.searchsorted(flat, keys, "right").reshape(n, m) - base
        out[side] = (g, ((lo + hi - 1) / 2.0).astype(np.float32), order)
    return out


def detail_distance(
    details: Details, a: np.ndarray, b: np.ndarray, *, limit: float | None = None, chunk: int = 1 << 12
) -> np.ndarray:
    """(P,) pairs of image positions -> (P,) float: the worst 4x4-block residual between the
    two thumbnails once tone is matched, in units of the pictures' grey-level spread; the
    larger of the two directions. 0 for identical detail; unrelated pictures score ~1.

    With `limit` (what the report asks: within :data:`DETAIL_LIMIT` or not), a pair within it
    before any shift is not searched further, which saves most of the work on real copies;
    the value is then an upper bound (still within the limit). Computed `chunk` pairs at a time."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    out = np.zeros(len(a), dtype=np.float64)
    level = details.level_of(a, b)
    for start in range(0, len(a), chunk):
        part = slice(start, start + chunk)
        nodes, local = np.unique(np.concatenate([a[part], b[part]]), return_inverse=True)
        la, lb = local[: len(local) // 2], local[len(local) // 2 :]
        levels = _levels(details.thumbs[nodes])
        for side in LEVELS:
            k = np.flatnonzero(level[part] == side)
            if len(k):
                g, rank, order = levels[side]
                x, y = la[k], lb[k]
                one = _residual(g[x], rank[x], order[y], g[y], side, limit)
                two = _residual(g[y], rank[y], order[x], g[x], side, limit)
                out[start + k] = np.maximum(one, two)
    return out


def _residual(
    x: np.ndarray, x_rank: np.ndarray, y_sorted: np.ndarray, y: np.ndarray, side: int, limit: float | None
) -> np.ndarray:
    """x mapped onto y's tone (y's value at x's quantile, interpolated between ranks), minus y,
    each block at its best of the :data:`SHIFT` shifts: the worst block's RMS over y's standard
    deviation. Shapes (P, side*side). With `limit`, pairs already within it unshifted are not
    searched further (their value is then an upper bound, itself within the limit)."""
    n = len(y)
    lo = np.floor(x_rank).astype(np.int64)
    hi = np.minimum(lo + 1, side * side - 1)
    w = x_rank - lo
    mapped = np.take_along_axis(y_sorted, lo, 1) * (1 - w) + np.take_along_axis(y_sorted, hi, 1) * w
    scale = np.maximum(y.std(axis=1), 1.0)
    cell = side // _GRID
    y = y.reshape(n, side, side)
    mapped = mapped.reshape(n, side, side)

    def blocks(r: np.ndarray) -> np.ndarray:  # (m, side, side) -> (m, GRID*GRID) mean squares
        return (r * r).reshape(len(r), _GRID, cell, _GRID, cell).mean(axis=(2, 4)).reshape(len(r), -1)

    worst = np.sqrt(blocks(y - mapped).max(axis=1)) / scale
    s = SHIFT if side >= 8 else 0  # at 4 px a block is one pixel: a shift would match anything
    todo = np.flatnonzero(worst > limit) if limit is not None else np.arange(n)
    if s and len(todo):
        yt = y[todo]
        pad = np.pad(mapped[todo], ((0, 0), (s, s), (s, s)), mode="edge")
        best = None
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                ms = blocks(yt - pad[:, s + dy : s + dy + side, s + dx : s + dx + side])
                best = ms if best is None else np.minimum(best, ms)
        assert best is not None
        worst[todo] = np.sqrt(best.max(axis=1)) / scale[todo]
    return worst
