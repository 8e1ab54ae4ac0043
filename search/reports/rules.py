"""What a near-duplicate tier admits: the rule between two images, from their vectors and hashes.

:mod:`.duplicates` gathers the candidates (the distinct images' vectors, their kNN pairs, their
perceptual hashes, crop hashes and detail thumbnails) and forms the groups; this module says which
pairs pass a tier (:func:`tier_mask`, over the candidate pairs at once) and whether one image
passes against several (:meth:`Candidates.passes`, the :data:`.grouping.Rule` the groups are
checked with). The two must agree: a group is formed from the first and checked with the second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detail import DETAIL_LIMIT, Details, detail_distance
from .grouping import Rule
from .model import Tier
from .scan import crop_distance, hamming


@dataclass
class Candidates:
    """What the tiers are decided on: the distinct images' vectors, their kNN pairs and hashes."""

    ids: np.ndarray  # (n,) catalog ids
    vecs: np.ndarray  # (n, d) unit vectors the similarities are cosines of
    i: np.ndarray  # (p,) pair ends, positions into ids
    j: np.ndarray
    s: np.ndarray  # (p,) cosine of each pair
    d: np.ndarray  # (p,) hash distance of each pair (255: not hashed)
    dc: np.ndarray  # (p,) crop distance of each pair (255: not hashed)
    dd: np.ndarray  # (p,) detail distance of each pair whose hashes are close (0: not compared)
    codes: np.ndarray | None  # (n,) perceptual hashes, when used
    crops: np.ndarray | None  # (n, CROP_HASHES) crop hashes, when used
    details: Details | None  # detail thumbnails, when hashes are used
    method: str
    by_vectors: np.ndarray  # (p,) True: a pair the vectors' kNN proposed, False: only the hashes'
    crowd: np.ndarray  # (n,) each image's crowd: its k-th neighbour's cosine (:func:`.pairs.similar_pairs`)
    stricter: dict[str, Tier]  # per tier, the loosest stricter tier (if any)
    canvas: np.ndarray | None  # (n,) equal: the same pixel size and file format (:func:`.hashes.canvases`)

    def same_canvas(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.canvas is None:
            return np.zeros(len(a), dtype=bool)
        return self.canvas[a] == self.canvas[b]

    def cosine_passes(
        self, tier: Tier, s: np.ndarray, a: np.ndarray, b: np.ndarray, vetoed: np.ndarray | None = None
    ) -> np.ndarray:
        """Which pairs (a, b) with cosines `s` the tier admits on their cosine (:func:`cosine_rule`);
        `vetoed`: those the stricter tier's detail veto turns away (:func:`veto_candidates`)."""
        up = self.stricter.get(tier.name)
        return cosine_rule(tier, s, self.crowd[a], self.crowd[b], None if up is None else up.threshold, vetoed)

    def stricter_vetoed(self, tier: Tier) -> np.ndarray | None:
        """Of the candidate pairs, those the stricter tier's detail veto turns away."""
        maybe = veto_candidates(self.stricter.get(tier.name), self.s, self.d, self.dc, self.same_canvas(self.i, self.j))
        return None if maybe is None else maybe & (self.dd > DETAIL_LIMIT)

    def passes(self, tier: Tier) -> Rule:
        """The tier's rule between one image and several, computed from vectors and hashes."""
        up = self.stricter.get(tier.name)
        crops_used = any(t is not None and t.crop_hamming is not None for t in (tier, up))

        def rule(node: int, others: np.ndarray) -> np.ndarray:
            nodes = np.full(len(others), node)
            s = self.vecs[others] @ self.vecs[node]
            whole = np.zeros(len(others), dtype=bool)
            crop = None
            if crops_used and self.crops is not None:
                crop = crop_distance(
                    self.crops[others], np.broadcast_to(self.crops[node], (len(others), self.crops.shape[1]))
                )
            if tier.hamming is None or self.codes is None:
                ok = self.cosine_passes(tier, s, nodes, others)
            else:
                d = hamming(self.codes[others], np.full(len(others), self.codes[node]))
                same = self.same_canvas(nodes, others)
                whole = whole_pictures(tier, d, crop)
                canvas = whole & same & tier.detail_veto
                maybe = veto_candidates(up, s, d, crop, same)
                maybe = np.zeros(len(others), dtype=bool) if maybe is None else maybe
                # detail decides a hash match the cosine does not pass (it may rescue it), and a
                # cosine match on one canvas (this tier's veto, or the stricter tier's)
                ok = self.cosine_passes(tier, s, nodes, others)
                check = np.flatnonzero((whole & (~ok | canvas)) | maybe)
                differs = np.zeros(len(others), dtype=bool)
                if len(check) and self.details is not None:
                    far = detail_distance(self.details, nodes[check], others[check], limit=DETAIL_LIMIT)
                    differs[check] = far > DETAIL_LIMIT
                if (maybe & differs).any():  # the stricter tier vetoes some: they lose its pass
                    ok = self.cosine_passes(tier, s, nodes, others, vetoed=maybe & differs)
                ok &= ~(canvas & differs)
                ok |= whole & ~differs
            if crop is not None and tier.crop_hamming is not None:
                ok |= ~whole & (crop <= tier.crop_hamming)
            return ok

        return rule

    def distance(self, tier: Tier, d: np.ndarray, dc: np.ndarray) -> np.ndarray:
        """The hash distance shown for pairs at `tier`: the whole-picture one, or the crop
        one where the tier counts crops and it is smaller."""
        return np.minimum(d, dc) if tier.crop_hamming is not None and self.crops is not None else d


def cosine_rule(
    tier: Tier,
    s: np.ndarray,
    crowd_a: np.ndarray,
    crowd_b: np.ndarray,
    stricter: float | None = None,
    vetoed: np.ndarray | None = None,
) -> np.ndarray:
    """Which pairs with cosines `s` `tier` admits on their cosine: at or above its threshold and,
    at a tier with a `crowd_margin`, at least that far above both ends' crowds (their k-th
    neighbour's cosine, :func:`.pairs.similar_pairs`), unless the `stricter` tier's threshold admits the
    pair anyway: a pair a stricter tier passes passes every looser one, so the tiers nest.

    `vetoed` (where given) are pairs the stricter tier turns away whatever their cosine (its
    detail veto, :func:`veto_candidates`): the stricter tier does not pass them, so nesting asks
    nothing for them, and they must stand out from their crowds like any other cosine match. Without
    this, Tux Paint's dreidel with another letter (cosine 0.955 to its lettered twin, vetoed at the
    near-duplicate tier) still joined their family at the similar tier, on a cosine that its crowd
    of 0.69-0.73 (the family's own copies) shows is not unusual there (docs/benchmarks.md, "The
    18-epoch base model ships")."""
    ok = s >= tier.threshold
    if tier.crowd_margin is None:
        return ok
    stands_out = s - np.maximum(crowd_a, crowd_b) >= tier.crowd_margin
    if stricter is not None:
        above = s >= stricter
        stands_out |= above if vetoed is None else above & ~vetoed
    return ok & stands_out


def veto_candidates(
    up: Tier | None, s: np.ndarray, d: np.ndarray, dc: np.ndarray | None, same: np.ndarray
) -> np.ndarray | None:
    """Pairs that `up` (a stricter tier) would admit on their cosine but may veto on their detail:
    on one canvas (`same`), their whole pictures hashing alike at `up` (:func:`tier_mask`). Which of
    them it does veto is their detail distance's call. None: `up` vetoes nothing."""
    if up is None or not up.detail_veto or up.hamming is None:
        return None
    return (s >= up.threshold) & whole_pictures(up, d, dc) & same


def tier_mask(
    tier: Tier,
    s: np.ndarray,
    d: np.ndarray,
    dc: np.ndarray,
    dd: np.ndarray,
    cosine: np.ndarray | None = None,
    canvas: np.ndarray | None = None,
) -> np.ndarray:
    """The pairs that pass `tier`: cosine (`cosine`, when given: :meth:`Candidates.cosine_passes`;
    else the threshold alone, a superset); or whole-picture hashes within `hamming` bits and the
    same detail (:mod:`.detail`); or, for pairs whose whole pictures do not hash alike, a crop
    window within `crop_hamming` bits. A pair whose whole pictures hash alike is aligned: when
    its detail differs it is two variants of one drawing, and no crop window makes it a copy.

    At a tier with `detail_veto`, nor does its cosine when the two files share a canvas
    (`canvas`: the same pixel size and file format). Nothing then stands between them that could
    blur detail (no resampling, no other codec), so different detail is a different drawing: Tux
    Paint's dreidels with another letter sit at cosine 0.93-0.999 and joined a family of 9 into a
    group of 11 (docs/benchmarks.md, "Variants on one canvas"). Between files of different sizes
    or formats the check is not trusted to overrule the cosine: resampled and recompressed copies
    of detailed stamps failed it (JPEG q30 or a 25% copy against a 50% one, 30-45 true pairs a
    seed on Tux Paint)."""
    m = s >= tier.threshold if cosine is None else cosine.copy()
    whole = whole_pictures(tier, d, dc)
    if canvas is not None and tier.detail_veto:
        m &= ~(whole & canvas & (dd > DETAIL_LIMIT))
    m |= whole & (dd <= DETAIL_LIMIT)
    if tier.crop_hamming is not None:
        m |= ~whole & (dc <= tier.crop_hamming)
    return m


def whole_pictures(tier: Tier, d: np.ndarray, dc: np.ndarray | None) -> np.ndarray:
    """Pairs compared as whole pictures: their hashes within the tier's `hamming`, and (at a tier
    that counts crops) no crop window matching as well. Detail decides those (:mod:`.detail`);
    the others are compared as a crop, where thumbnails of the two whole pictures do not line up.
    A tie goes to the crop: on the tuxpaint-edits corpus (three seeds) counting ties as whole
    left core recall 0.91-0.93 but a "similar" group of 11 around a family of 9 (seed 2); as crops
    0.90-0.91 and no group over its family + 1 (docs/benchmarks.md, "Near-duplicates across corpora")."""
    if tier.hamming is None:
        return np.zeros(len(d), dtype=bool)
    whole = d <= tier.hamming
    if tier.crop_hamming is not None and dc is not None:
        whole &= d < dc
    return whole


def any_tier(tiers: Sequence[Tier], s: np.ndarray, d: np.ndarray, dc: np.ndarray, dd: np.ndarray) -> np.ndarray:
    """The pairs that pass at least one tier (a looser tier's hash caps may exclude a crop that a
    stricter tier's admits: a pair hashes "whole" at 10 bits but not at 8)."""
    m = np.zeros(len(s), dtype=bool)
    for t in tiers:
        m |= tier_mask(t, s, d, dc, dd)
    return m
