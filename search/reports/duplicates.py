"""Exact duplicates and near-duplicates in tiers.

No web framework here: ``lookalike report``, the ``/reports/...`` HTTP endpoints and
the benchmarks call these functions. The decoding pass (outlier scores, perceptual
hashes) is :mod:`.scan`; writing JSON/CSV/HTML is :mod:`.formats` and :mod:`.html`.

- **Exact duplicates** come from the catalog: files with the same content hash.
- **Near-duplicates** never build an all-pairs matrix: each image asks for its ``k``
  nearest neighbours (exact kNN in BLAS batches up to :data:`EXACT_MAX` vectors, else
  the index's own HNSW/IVF) and, where perceptual hashes are used, its ``k`` nearest by hash
  (:func:`.pairs.hash_pairs`: an edit the vectors place far away, such as a greyscale copy, can
  hash as the same picture), so memory grows with n*k. A pair of neighbours joins a
  tier when the cosine of their *whitened* vectors (:func:`whiten`) reaches the tier's
  threshold, or when their perceptual hashes differ in at most the tier's `hamming`
  bits *and* their 16x16 thumbnails agree in detail once tone and resolution are matched
  (:mod:`.detail`: variants of one drawing, a dreidel with another letter, hash as close as
  copies do), or (tiers with `crop_hamming`) when one's hash is closer to a window of the
  other's picture than to the whole and within `crop_hamming` bits (:func:`.scan.crop_distance`:
  a crop of 5-15%). At a tier with a `crowd_margin` (the "similar" tier), a pair the cosine alone
  admits must also stand out from both images' crowds, their k-th neighbour's cosine
  (:func:`.rules.cosine_rule`), unless the stricter tier passes it (a pair that tier vetoes gets no
  such pass); at tiers with `detail_veto` (the two stricter), two files of one
  size and format whose whole pictures hash alike but whose detail differs are two pictures
  whatever their cosine (:func:`.rules.tier_mask`). A pair whose whole pictures hash alike and
  whose detail differs is not rescued by a crop window that matches no better
  (:func:`.rules.whole_pictures`). How central an image is among its copies (which seeds a
  group first, which is kept) is counted on the vectors' pairs alone. Groups never chain:
  every member passes the tier's rule against the group's keeper (:data:`LINKAGE`,
  :mod:`.grouping`). A group is shown at the strictest tier at which it holds together;
  a looser tier shows a group only when it adds images. Each group names a keeper
  (largest resolution, then most matched, then largest file: :func:`_keeper_rank`) and
  lists the others with their similarity and hash distance to it.

Byte-identical copies count once in the near-duplicate and outlier sections (they
are the exact-duplicate section's business). The tiers were calibrated with
``bench/near_duplicates.py`` (docs/benchmarks.md, "Reports") and live in :data:`TIERS`
alone; that script prints suggested values for a new default model.

JSON schema ("lookalike.report/1"): :func:`search.reports.formats.write_json`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select

from indexer import ImageRecord
from indexer.catalog import STATUS_OK

from ..engine import Engine
from .detail import DETAIL_LIMIT, Details, detail_distance
from .grouping import Rule, attach_to_keepers, complete_groups, star_groups
from .hashes import canvases, crop_distances, hash_codes, hash_tiers, picture_side
from .members import member_rows
from .model import (
    Group,
    Member,
    NearDuplicates,
    ReportError,
    Tier,
)
from .pairs import DEFAULT_K, hash_pairs, similar_pairs, union_pairs
from .rules import Candidates, any_tier, tier_mask
from .scan import NO_HASH, Scan, crop_distance, hamming, scan_images
from .vectors import compared_in_snapshot

log = logging.getLogger(__name__)


#: The "similar" tier's cosine-only matches must stand out from both images' crowds (their
#: 16th neighbour's cosine) by this much (:class:`.model.Tier`). Without it MNIST, where no two
#: digits are copies, made 22-28 "similar" groups of up to 3-5 "1"s at cosine 0.80-0.89 (a
#: "1"'s 16th neighbour is another "1" at 0.5-0.7). Margins 0.30-0.50 were measured on every
#: corpus of the cross-corpus benchmark, three seeds (docs/benchmarks.md, "A crowd margin for
#: the similar tier"): 0.40 was the smallest that left no MNIST group over 2 with the 6-epoch base
#: model. The 18-epoch base (docs/benchmarks.md, "The 18-epoch base model ships") makes one more
#: triple of "1"s at cosine 0.89-0.93 against crowds of 0.42-0.45 (margins 0.455-0.461), so 0.50:
#: the smallest margin measured that leaves no MNIST group over 2 with either base. Plainly, MNIST
#: chose it again; its cost on the Tux Paint tuning corpus is 0.002-0.004 of similar-tier recall
#: (both bases), and wallpapers and many-duplicates do not change at any margin.
CROWD_MARGIN = 0.50
#: Calibrated with bench/near_duplicates.py on the Tux Paint stamps and generated variants
#: (docs/benchmarks.md, "Reports"): each is the (cosine, Hamming) pair with the best recall
#: at grouped-pair precision >= 0.99, 0.95 and 0.80. Re-run it after changing the default
#: model and copy its suggestions here.
TIERS: tuple[Tier, ...] = (
    Tier("near-identical", 0.97, "the same picture resized or recompressed", hamming=4, detail_veto=True),
    Tier(
        "near-duplicate",
        0.90,
        "the same picture resized, recompressed, brightened or cropped a little",
        hamming=8,
        crop_hamming=8,
        detail_veto=True,
    ),
    Tier(
        "similar",
        0.80,
        "alike: edits, larger crops, or another picture of the same thing",
        hamming=10,
        crop_hamming=10,
        crowd_margin=CROWD_MARGIN,
    ),
)
#: How groups form (:mod:`.grouping`): "complete", every two members pass; "cores", those
#: groups, then each image left out joins its closest group if it passes against the keeper;
#: "star", every member passes against the keeper only. Chosen on the cross-corpus benchmark
#: (docs/benchmarks.md, "Near-duplicates across corpora"): complete linkage kept a crop out of
#: its family when it failed against a brightened copy (core recall 0.88-0.93), stars let two
#: families that hash alike share a keeper (Tux Paint's flags: 11 images of 2 stamps);
#: cores keep recall 0.90-0.94 at precision 0.99-1.0 with no group over its family + 1.
LINKAGE = "cores"
LINKAGES = ("cores", "star", "complete")
#: Up to this many vectors, pairs come from exact kNN (BLAS); above, from the index's HNSW/IVF.
EXACT_MAX = 200_000


def resolve_tiers(spec: str | float | None) -> tuple[Tier, ...]:
    """`None`/"all": every tier; a tier name: the tiers down to that one; a number: the tiers
    at or above it, plus a custom tier at exactly that similarity."""
    if spec is None or spec == "all":
        return TIERS
    names = [t.name for t in TIERS]
    if isinstance(spec, str) and spec in names:
        return TIERS[: names.index(spec) + 1]
    try:
        x = float(spec)
    except (TypeError, ValueError):
        raise ReportError(f"unknown tier {spec!r}: give a similarity in [-1, 1] or one of {', '.join(names)}") from None
    if not -1.0 <= x <= 1.0:
        raise ReportError(f"near-duplicate threshold {x} is not a cosine similarity in [-1, 1]")
    tiers = [t for t in TIERS if t.threshold >= x]
    if not any(math.isclose(t.threshold, x) for t in tiers):
        tiers.append(Tier(f"sim>={x:g}", x, "custom threshold"))
    return tuple(tiers)


# ---------------------------------------------------------------- exact duplicates


def exact_duplicates(engine: Engine) -> list[Group]:
    """Groups of byte-identical indexed files (same content hash), biggest first."""
    with engine.catalog.session() as s:
        ok = ImageRecord.status == STATUS_OK
        dup = select(ImageRecord.content_hash).where(ok, ImageRecord.content_hash.is_not(None))
        dup = dup.group_by(ImageRecord.content_hash).having(func.count(ImageRecord.id) > 1)
        cols = (
            ImageRecord.content_hash,
            ImageRecord.id,
            ImageRecord.path,
            ImageRecord.width,
            ImageRecord.height,
            ImageRecord.size,
        )
        rows = s.execute(select(*cols).where(ok, ImageRecord.content_hash.in_(dup)).order_by(ImageRecord.id)).all()
    by_hash: dict[str, list[Member]] = {}
    for h, i, p, w, hh, sz in rows:
        by_hash.setdefault(h, []).append(Member(i, p, w, hh, sz, 1.0))
    groups = [Group("exact", ms[0], ms[1:], key=h) for h, ms in by_hash.items()]  # keeper: the first indexed
    groups.sort(key=lambda g: (-len(g.others), g.keeper.id))
    return groups


# ---------------------------------------------------------------- near-duplicates


def near_duplicates(
    engine: Engine,
    tiers: Sequence[Tier] = TIERS,
    *,
    k: int = DEFAULT_K,
    method: str = "auto",
    whitened: bool = True,
    phash: bool = True,
    scan: Scan | None = None,
    batch_size: int = 8192,
    linkage: str = LINKAGE,
) -> NearDuplicates:
    """Near-duplicate groups of the indexed images, per tier. `method`: auto, exact or index.

    Stages: the distinct images' vectors (:func:`_distinct_vectors`); their kNN pairs
    (:func:`similar_pairs`); perceptual hashes, capped per collection (:func:`.hashes.hash_tiers`),
    and the hashes' own kNN pairs within the cap (:func:`hash_pairs`);
    groups per tier in which every two members pass the tier's rule (:func:`_tier_groups`,
    :mod:`.grouping`); the groups as the catalog describes them (:func:`_describe`).

    Similarities are cosines of the whitened search vectors (:func:`whiten`), unless
    `whitened` is False (the raw cosine that searches use). Where the search vectors are VLAD,
    they are cosines of the scan's copy vectors instead (:meth:`encoder.Encoder.copy_vectors`:
    copies of one picture keep those, not VLAD), so every image is decoded once even without
    `phash`; the search vectors still propose the neighbours when an index does. With `phash` (and tiers that
    set `hamming`), every image is also decoded once (:func:`scan_images`, cached) and a
    pair whose perceptual hashes are that close (and whose detail agrees) passes too: the vectors alone miss
    brightness changes that the hash sees (docs/benchmarks.md, "Reports")."""
    t0 = time.perf_counter()
    tiers = tuple(sorted(tiers, key=lambda t: -t.threshold))
    if not tiers:
        raise ReportError("no near-duplicate tiers asked for")
    use_hash = phash and any(t.hamming is not None or t.crop_hamming is not None for t in tiers)
    if scan is None and use_hash:
        scan = scan_images(engine)
    ids, vecs, raw, index, method = _distinct_vectors(engine, method, whitened, scan)
    floor = -1.0 if use_hash else tiers[-1].threshold  # with hashes, every neighbour is a candidate
    crowd = np.empty(len(ids), dtype=np.float32)  # each image's k-th neighbour's cosine (rules.cosine_rule)
    i, j, s = similar_pairs(vecs, floor, k, index=index, ids=ids, queries=raw, batch_size=batch_size, crowd=crowd)
    del raw
    codes = crops = thumbs = None
    proposed = len(i)  # pairs [0, proposed) are the vectors'; any after them, the hashes'
    if use_hash:
        codes, crops, thumbs = hash_codes(engine, ids, scan)
        tiers = hash_tiers(tiers, codes, crops, vecs)
        if any(t.hamming is not None for t in tiers):
            # the hashes' own nearest neighbours are candidates too: an edit the vectors place
            # far away (greyscale) can hash as the same picture (:func:`.pairs.hash_pairs`)
            cap = max(t.hamming for t in tiers if t.hamming is not None)
            hi, hj = hash_pairs(codes, cap, k, valid=codes != NO_HASH)
            i, j, s = union_pairs(i, j, s, hi, hj, vecs)
        else:
            codes = None
        if not any(t.crop_hamming is not None for t in tiers):
            crops = None
        use_hash = codes is not None or crops is not None
    by_vectors = np.arange(len(i)) < proposed
    unhashed = np.full(len(i), 255, dtype=np.int16)
    d = hamming(codes[i], codes[j]) if codes is not None else unhashed
    dc = crop_distances(crops, i, j) if crops is not None else unhashed
    if linkage not in LINKAGES:
        raise ReportError(f"unknown linkage {linkage!r}: {', '.join(LINKAGES)}")
    keep = any_tier(tiers, s, d, dc, np.zeros(len(s)))  # before the detail check: a superset
    i, j, s, d, dc, by_vectors = i[keep], j[keep], s[keep], d[keep], dc[keep], by_vectors[keep]
    rows, fmt = member_rows(engine, ids[np.unique(np.concatenate([i, j]))])  # every image a pair may group
    details, dd, canvas = None, np.zeros(len(s)), None
    if codes is not None and thumbs is not None:
        sides = np.array([picture_side(rows.get(int(x))) for x in ids], dtype=np.int64)
        details = Details(thumbs, sides)
        canvas = canvases(ids, rows, fmt)
        # only pairs a hash could admit and the cosine does not already pass at every tier, or
        # whose cosine the detail may overrule (one canvas, at a tier that vetoes: :func:`tier_mask`)
        hashed = d <= max(t.hamming for t in tiers if t.hamming is not None)
        veto = any(t.detail_veto for t in tiers) & (canvas[i] == canvas[j])
        near = np.flatnonzero(hashed & ((s < tiers[0].threshold) | veto))
        dd[near] = detail_distance(details, i[near], j[near], limit=DETAIL_LIMIT)
    keep = any_tier(tiers, s, d, dc, dd)
    kept = (i[keep], j[keep], s[keep], d[keep], dc[keep], dd[keep])
    stricter = {t.name: min(tiers[:n], key=lambda u: u.threshold) for n, t in enumerate(tiers) if n}
    cand = Candidates(ids, vecs, *kept, codes, crops, details, method, by_vectors[keep], crowd, stricter, canvas)
    # How central an image is among its copies is judged on the vectors alone: a hash that
    # cannot see brightness makes a brightened copy as central as its original, and was the
    # keeper of 35 of 60 wallpaper families once the hashes' own neighbours were candidates too
    # (vectors: 2 of 60; docs/benchmarks.md, "Near-duplicates across corpora").
    central = cand.s >= tiers[-1].threshold
    degree = np.bincount(np.concatenate([cand.i[central], cand.j[central]]), minlength=len(cand.ids))
    rank = _keeper_rank(cand.ids, rows, degree)
    groups = _describe(cand, _tier_groups(cand, tiers, linkage, rank), tiers, rows, rank)
    copies = engine.snapshot().encoder.has_copy_vectors
    what = "copy vectors (the model's own; search uses VLAD)" if copies else "search vectors"
    sim = f"cosine of the whitened {what}" if whitened else f"cosine of the {what}"
    sim += " (or perceptual hash distance)" if use_hash else ""
    if phash and not use_hash:
        sim += " (perceptual hashes were not used: unrelated images here have near-identical hashes)"
    return NearDuplicates(tiers, groups, k, method, len(ids), len(cand.i), time.perf_counter() - t0, sim)


def _distinct_vectors(engine: Engine, method: str, whitened: bool, scan: Scan | None):
    """:func:`compared_vectors`, the index to find neighbours with (None: exact kNN) and the method."""
    snap = engine.snapshot()  # one generation for the vectors and the index
    ids, vecs, raw = compared_in_snapshot(engine, snap, scan, whitened)
    approximate = snap.manifest.index_type != "flat" and snap.search.ntotal == len(snap.vectors)
    if method == "auto":
        method = "index" if approximate and len(ids) > EXACT_MAX else "exact"
    if method not in ("exact", "index"):
        raise ReportError(f"unknown method {method!r}: auto, exact or index")
    index = snap.search if method == "index" else None
    if index is not None:
        method = f"index ({snap.manifest.index_type})"
    return ids, vecs, raw, index, method


def _tier_groups(
    cand: Candidates, tiers: Sequence[Tier], linkage: str, rank: np.ndarray | None
) -> dict[str, list[np.ndarray]]:
    """For each tier (strictest first): node arrays, each a group shown at that tier. Each tier
    merges the groups of the one above (:mod:`.grouping`); a group it only repeats is not shown again."""
    out: dict[str, list[np.ndarray]] = {}
    stricter: list[np.ndarray] = []
    for tier in tiers:
        cosine = cand.cosine_passes(tier, cand.s, cand.i, cand.j, vetoed=cand.stricter_vetoed(tier))
        m = tier_mask(tier, cand.s, cand.d, cand.dc, cand.dd, cosine, cand.same_canvas(cand.i, cand.j))
        d = cand.distance(tier, cand.d[m], cand.dc[m])
        closeness = cand.s[m] - np.where(d == 255, 0, d) / 64.0
        rule = cand.passes(tier)
        n = len(cand.ids)
        if linkage == "star":
            groups = star_groups(n, cand.i[m], cand.j[m], closeness, rule, rank, stricter)
        elif linkage == "complete":
            central = cand.s[m] >= tiers[-1].threshold  # seeds in order of their vector matches, as keepers
            groups = complete_groups(n, cand.i[m], cand.j[m], closeness, rule, stricter, central)
        else:
            groups = _cores(cand, tiers, m, closeness, rule, rank, stricter)
        seen = {tuple(sorted(g.tolist())) for g in stricter}
        shown = [g for g in groups if tuple(sorted(g.tolist())) not in seen]
        shown.sort(key=lambda g: (-len(g), int(g.min())))
        out[tier.name] = shown
        stricter = groups
    return out


def _cores(
    cand: Candidates,
    tiers: Sequence[Tier],
    m: np.ndarray,
    closeness: np.ndarray,
    rule: Rule,
    rank: np.ndarray | None,
    stricter: list[np.ndarray],
) -> list[np.ndarray]:
    """The "cores" linkage at one tier, whose passing pairs are `m`: complete-linkage cores grown
    from the pairs the vectors proposed; then each image left out joins its closest group through
    the keeper (:func:`.grouping.attach_to_keepers`), over every pair; then the images still left
    make cores of their own, over every pair (an original and its greyscale copy, which only
    the hashes' own neighbours propose). Let into the first cores, such copies took the place of
    other edits that fail against them: core recall 0.01 lower over 3 seeds x 3 corpora
    (docs/benchmarks.md, "Near-duplicates across corpora")."""
    n = len(cand.ids)
    core = m & cand.by_vectors
    near = closeness[core[m]]
    central = cand.s[core] >= tiers[-1].threshold  # seeds in order of their vector matches, as keepers
    groups = complete_groups(n, cand.i[core], cand.j[core], near, rule, stricter, central)
    i, j = cand.i[m], cand.j[m]
    groups = attach_to_keepers(groups, n, i, j, closeness, rule, rank)
    grouped = np.zeros(n, dtype=bool)
    for g in groups:
        grouped[g] = True
    left = ~grouped[i] & ~grouped[j]
    if left.any():
        central = cand.s[m][left] >= tiers[-1].threshold
        groups += complete_groups(n, i[left], j[left], closeness[left], rule, (), central)
    return groups


def _keeper_rank(ids: np.ndarray, rows: dict[int, Member], degree: np.ndarray) -> np.ndarray:
    """Each node's place in keeper order; nodes without a catalog row (deleted since the
    snapshot) last. The keeper is the largest resolution; among equals, the image the most
    others match (`degree`: its candidate pairs at the loosest tier's cosine), then the largest file, then
    the lowest id. The most-matched image is the one the others were made from: its edits
    each pass against it but not always against each other. File size alone picked a
    brightened copy over its original in two groups of three on the cross-corpus benchmark
    (a brighter PNG compresses worse), so resolving would have quarantined the original."""
    n = {int(x): k for k, x in enumerate(ids)}

    def key(m: Member) -> tuple:
        return (-(m.width or 0) * (m.height or 0), -int(degree[n[m.id]]), -(m.size or 0), m.id)

    known = sorted((rows[int(x)] for x in ids if int(x) in rows), key=key)
    place = {m.id: k for k, m in enumerate(known)}
    return np.array([place.get(int(x), len(known) + k) for k, x in enumerate(ids)], dtype=np.int64)


def _describe(
    cand: Candidates,
    node_groups: dict[str, list[np.ndarray]],
    tiers: Sequence[Tier],
    rows: dict[int, Member],
    rank: np.ndarray,
) -> dict[str, list[Group]]:
    """Each group's members as the catalog has them, the keeper (:func:`_keeper_rank`)
    first, the others by similarity to it."""
    groups: dict[str, list[Group]] = {}
    for tier in tiers:
        out = []
        for g in node_groups[tier.name]:
            present = [int(p) for p in g if int(cand.ids[p]) in rows]  # rows deleted since the snapshot drop out
            if len(present) < 2:
                continue
            order = sorted(present, key=lambda p: rank[p])
            ms = [rows[int(cand.ids[p])] for p in order]
            sims = cand.vecs[order] @ cand.vecs[order[0]]
            bits = _keeper_distance(cand, tier, order)
            ms = [
                Member(
                    m.id,
                    m.path,
                    m.width,
                    m.height,
                    m.size,
                    min(1.0, float(x)),
                    None if bits is None or bits[n] == 255 else int(bits[n]),
                )
                for n, (m, x) in enumerate(zip(ms, sims, strict=True))
            ]
            ms[1:] = sorted(ms[1:], key=lambda m: (-(m.similarity or 0), m.id))
            out.append(Group(tier.name, ms[0], ms[1:]))
        groups[tier.name] = out
    return groups


def _keeper_distance(cand: Candidates, tier: Tier, order: list[int]) -> np.ndarray | None:
    """The hash distance of each of `order` (the keeper first) to the keeper, as the tier counts it."""
    if cand.codes is None and cand.crops is None:
        return None
    n = len(order)
    d = hamming(cand.codes[order], np.full(n, cand.codes[order[0]])) if cand.codes is not None else None
    dc = None
    if cand.crops is not None:
        dc = crop_distance(cand.crops[order], np.broadcast_to(cand.crops[order[0]], (n, cand.crops.shape[1])))
    if d is None:
        return dc if tier.crop_hamming is not None else None
    return cand.distance(tier, d, dc) if dc is not None else d
