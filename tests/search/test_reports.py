"""Reports' findings on a small real index (the planted folder of tests/search/conftest.py), on a
SQLite and a PostgreSQL catalog: planted exact and near duplicates and a planted outlier are found,
and the tier, hash and outlier rules behave. Formats, CLI and HTTP: test_report_formats.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from postgres import CATALOGS, url_for

from indexer import build_index
from search.engine import Engine
from search.reports import (
    CACHE_FILE,
    TIERS,
    ReportError,
    Tier,
    connected_components,
    exact_duplicates,
    near_duplicates,
    outliers,
    robust_z,
    similar_pairs,
)
from search.reports.scan import hamming, perceptual_hash
from search.reports.vectors import compared_in_snapshot


@pytest.fixture(scope="module")
def planted_pg(reports_planted: dict, request: pytest.FixtureRequest) -> Path:
    """The planted folder indexed again, with the same model, into a PostgreSQL catalog."""
    index = reports_planted["root"].parent / "index-pg"
    url = url_for(request, "postgresql", "reports")
    build_index(
        reports_planted["root"],
        index,
        reports_planted["root"].parent / "model",
        progress=False,
        workers=1,
        catalog_url=url,
    )
    return index


@pytest.fixture(params=CATALOGS)
def engine(reports_planted: dict, request: pytest.FixtureRequest):
    """An engine over the planted index: its SQLite catalog, then a PostgreSQL one (the findings
    read the catalog: exact duplicates, canonical ids, members' rows, outliers' paths)."""
    index = reports_planted["index"] if request.param == "sqlite" else request.getfixturevalue("planted_pg")
    eng = Engine(index)
    yield eng
    eng.close()


def _id(engine: Engine, path: str) -> int:
    return engine.get_by_path(path).id


# ---------------------------------------------------------------- planted findings


def test_exact_duplicates_are_grouped_with_the_first_indexed_as_keeper(engine: Engine, reports_planted: dict) -> None:
    groups = exact_duplicates(engine)
    assert len(groups) == 1
    paths = {m.path for m in groups[0].members}
    assert paths == {reports_planted["original"], "copies/same.png"}
    assert groups[0].keeper.id == min(m.id for m in groups[0].members)


def test_near_duplicate_of_a_resized_jpeg_is_found_with_the_larger_as_keeper(
    engine: Engine, reports_planted: dict
) -> None:
    orig, copy = _id(engine, reports_planted["resized_of"]), _id(engine, "copies/smaller.jpg")
    assert engine.search_id(copy, k=1)[0].id == orig
    # the tier just below the pair's cosine in the vectors the report compares: with a VLAD search
    # vector those are the copy vectors, not the search vectors (a threshold taken from the search
    # vectors held here only by chance, until the VLAD's words moved by a rounding)
    ids, vecs, _ = compared_in_snapshot(engine, engine.snapshot(), None, whitened=False)
    row = {int(i): r for r, i in enumerate(ids)}
    sim = float(vecs[row[copy]] @ vecs[row[orig]])
    near = near_duplicates(engine, (Tier("planted", sim - 1e-4),), k=8, whitened=False)
    group = next(g for g in near.groups["planted"] if copy in {m.id for m in g.members})
    assert group.keeper.id == orig  # the larger resolution
    assert {m.id for m in group.members} >= {orig, copy}
    # byte-identical copies count once
    assert "copies/same.png" not in {m.path for g in near.groups["planted"] for m in g.members}


def test_default_tiers_join_the_resized_copy_through_vectors_or_perceptual_hash(engine: Engine) -> None:
    orig, copy = _id(engine, "birds/albino_peahen.png"), _id(engine, "copies/smaller.jpg")
    near = near_duplicates(engine)
    assert near.similarity.endswith("(or perceptual hash distance)")
    together = [g for t in TIERS for g in near.groups[t.name] if {orig, copy} <= {m.id for m in g.members}]
    assert together and together[0].keeper.id == orig
    assert all(m.hamming is not None for m in together[0].members)
    vectors_only = near_duplicates(engine, phash=False)
    assert "perceptual" not in vectors_only.similarity


def test_perceptual_hash_is_the_imagehash_phash() -> None:
    imagehash = pytest.importorskip("imagehash")
    from conftest import sample_images

    from encoder import load_image

    pixels = np.stack([load_image(p, 64) for p in sample_images(2)])
    ours = perceptual_hash(pixels)
    for px, h in zip(pixels, ours, strict=True):
        theirs = int(str(imagehash.phash(Image.fromarray(px))), 16)
        assert int(np.int64(h).view(np.uint64)) == theirs
    assert hamming(ours[:1], ours[:1])[0] == 0 and hamming(ours[:1], np.array([-1]))[0] == 255


def test_hash_distance_limit_follows_how_alike_the_collection_hashes_are() -> None:
    from search.reports.scan import HASH_MARGIN, NO_HASH, hash_distance_limit

    rng = np.random.default_rng(0)
    uniform = rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64)  # unrelated natural images, roughly
    assert 8 <= hash_distance_limit(uniform) <= 12
    # Low-detail images: a few shapes, each hashed with a couple of bits of noise.
    protos = rng.integers(-(2**63), 2**63 - 1, 5, dtype=np.int64)
    flips = np.left_shift(np.int64(1), rng.integers(0, 63, (5000, 2))).sum(axis=1)
    alike = protos[rng.integers(0, 5, 5000)] ^ flips
    assert hash_distance_limit(alike) < 0  # no hash distance means "the same picture" there
    # The same hashes, where the vectors agree that equal-hash images are different pictures
    # (digits, icons): still no hash distance is trusted.
    unit = rng.normal(size=(5000, 16)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert hash_distance_limit(alike, vectors=unit) < 0
    # ... and where the vectors agree they are copies of 5 pictures (a folder of duplicates):
    # those pairs are not evidence against the hash, which stays trusted.
    family = np.array([np.flatnonzero(protos == (h ^ f))[0] for h, f in zip(alike, flips, strict=True)])
    copies = unit[family] + 0.01 * rng.normal(size=(5000, 16)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    assert 8 <= hash_distance_limit(alike, vectors=copies) <= 12
    assert hash_distance_limit(uniform[:20]) is None  # too few to judge
    with_missing = np.concatenate([uniform, np.full(5000, NO_HASH)])
    assert hash_distance_limit(with_missing) == hash_distance_limit(uniform)
    assert HASH_MARGIN > 0


def test_copies_the_vectors_miss_do_not_lower_the_hash_cap() -> None:
    """A folder of 30 pictures with 10 copies each, one copy of each (a greyscale one) placed
    far away by the vectors: its pairs with its family sit among the pairs the vectors call
    unrelated, and they must not set the cap (on a real folder like this they lowered the crop
    cap from 6 bits to 2 and switched crops off: docs/benchmarks.md)."""
    from search.reports.scan import hash_distance_limit

    rng = np.random.default_rng(0)
    pictures, copies = 30, 10
    base = rng.integers(-(2**63), 2**63 - 1, dtype=np.int64)
    # pictures that hash alike-ish, as real photos do: about 27 bits apart, the 1st percentile near 18
    bits = rng.random((pictures, 64)) < 0.3
    protos = base ^ (bits * (np.int64(1) << np.arange(64, dtype=np.int64))).sum(axis=1).astype(np.int64)
    family = np.repeat(np.arange(pictures), copies)
    codes = protos[family] ^ np.left_shift(np.int64(1), rng.integers(0, 63, len(family)))
    centres = rng.normal(size=(pictures, 32))
    caught = centres[family] + 0.05 * rng.normal(size=(len(family), 32))
    missed = caught.copy()
    grey = np.arange(len(family)) % copies == 0
    missed[grey] = rng.normal(size=(int(grey.sum()), 32))
    for v in (caught, missed):
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    limit = hash_distance_limit(codes, vectors=caught)
    assert limit is not None and limit >= 6
    assert hash_distance_limit(codes, vectors=missed) == limit


def test_candidate_bits_are_the_loosest_default_cap() -> None:
    from search.reports.duplicates import TIERS
    from search.reports.scan import CANDIDATE_BITS

    assert max(x for t in TIERS for x in (t.hamming, t.crop_hamming) if x is not None) == CANDIDATE_BITS


def test_untrustworthy_hashes_are_not_used(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import search.reports.scan as rs

    monkeypatch.setattr(rs, "HASH_MIN_IMAGES", 2)
    monkeypatch.setattr(rs, "HASH_MARGIN", 64)  # as if every pair of images hashed alike
    near = near_duplicates(engine)
    assert all(t.hamming is None for t in near.tiers)
    assert "were not used" in near.similarity
    monkeypatch.setattr(rs, "HASH_MARGIN", 0)  # every distance below the 1st percentile is trusted
    # ... and no share of close pairs turns them off. This corpus has 153 pairs: a pair that hashes
    # close (whole picture or crop windows) in the less similar half by cosine is 1.3% of that half,
    # over CANDIDATE_SHARE's 1%, and which half a pair falls in depends on the tiny model's vectors,
    # which changed with the thread count its training ran on (1 thread: hashes used; 2: off)
    monkeypatch.setattr(rs, "CANDIDATE_SHARE", 1.0)
    assert all(t.hamming is not None for t in near_duplicates(engine).tiers)


@pytest.mark.parametrize("linkage", ["cores", "star", "complete"])
def test_no_member_sits_below_its_tier_to_the_keeper(engine: Engine, linkage: str) -> None:
    """At a threshold just above the least similar pair, connected components join the whole
    collection; groups must not: every member passes the tier's rule against the keeper (the
    member a user would keep), and with complete linkage against every other member too."""
    from search.reports import compared_vectors

    ids, white, _ = compared_vectors(engine)  # what the report compares: byte-identical copies count once
    sims = white @ white.T
    loosest = float(sims.min()) + 0.05
    i, j, _ = similar_pairs(white, loosest, k=len(ids))
    assert len(np.unique(connected_components(len(ids), i, j))) == 1  # the chain the old rule made
    tiers = (Tier("loose", 0.3), Tier("looser", 0.0), Tier("loosest", loosest))
    near = near_duplicates(engine, tiers, phash=False, k=len(ids), linkage=linkage)
    row = {int(i): n for n, i in enumerate(ids)}
    for tier in near.tiers:
        for g in near.groups[tier.name]:
            assert all(m.similarity >= tier.threshold - 1e-5 for m in g.others), (tier.name, g.as_dict())
            v = [row[m.id] for m in (g.keeper, *g.others)]
            assert sims[v[0], v].min() >= tier.threshold - 1e-5, tier.name
            assert max((m.width or 0) * (m.height or 0) for m in g.others) <= (g.keeper.width or 0) * (
                g.keeper.height or 0
            )  # the largest resolution is kept
            if linkage == "complete":
                assert sims[np.ix_(v, v)].min() >= tier.threshold - 1e-5, tier.name
    if linkage != "star":  # a star may hold everything that passes against its keeper
        assert max(len(g.others) + 1 for t in near.tiers for g in near.groups[t.name]) < len(ids)
    with pytest.raises(ReportError, match="linkage"):
        near_duplicates(engine, tiers, phash=False, linkage="single")


def test_a_crowd_margin_keeps_only_matches_that_stand_out_from_their_neighbours(engine: Engine) -> None:
    """At a tier with a crowd margin, a member the cosine alone admits sits at least the margin
    above both its own and the keeper's k-th neighbour; a stricter tier's threshold lets a pair
    through whatever its crowd (the tiers nest)."""
    from search.reports import compared_vectors

    k = 6
    ids, white, _ = compared_vectors(engine)
    sims = white @ white.T
    crowd = -np.sort(-sims, axis=1)[:, k - 1]  # each image's k-th neighbour, itself counted
    row = {int(i): n for n, i in enumerate(ids)}
    threshold = float(np.quantile(sims[np.triu_indices(len(ids), 1)], 0.8))
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    standing = sims[a, b] - np.maximum(crowd[a], crowd[b])
    margin = float(np.median(standing))
    assert (standing < margin).any() and (standing >= margin).any()  # the margin splits the pairs

    def groups(*tiers: Tier) -> dict[str, list]:
        return near_duplicates(engine, tiers, phash=False, k=k).groups

    plain = groups(Tier("t", threshold))["t"]
    crowded = groups(Tier("t", threshold, crowd_margin=margin))["t"]
    assert crowded and [g.as_dict() for g in crowded] != [g.as_dict() for g in plain]
    for g in crowded:
        keeper = row[g.keeper.id]
        for m in g.others:
            other = row[m.id]
            assert sims[keeper, other] - max(crowd[keeper], crowd[other]) >= margin - 1e-5
    # Nothing stands out by 2 (cosines are at most 1): only the stricter tier's cosine admits.
    strict = float(np.quantile(sims[np.triu_indices(len(ids), 1)], 0.95))
    nested = groups(Tier("strict", strict), Tier("t", threshold, crowd_margin=2.0))
    assert nested["strict"]
    for g in nested["t"]:
        assert all(sims[row[g.keeper.id], row[m.id]] >= strict - 1e-5 for m in g.others)


def test_tiers_show_a_group_at_the_strictest_tier_only(engine: Engine) -> None:
    tiers = (Tier("a", 0.9999), Tier("b", 0.999), Tier("c", 0.5))
    near = near_duplicates(engine, tiers, phash=False)
    strict = [{m.id for m in g.members} for g in near.groups["a"] + near.groups["b"]]
    for g in near.groups["c"]:  # a looser group is shown only when it adds images
        assert {m.id for m in g.members} not in strict
    for t in tiers:
        for g in near.groups[t.name]:
            assert all(m.similarity is not None for m in g.members)
            assert g.keeper.similarity == pytest.approx(1.0, abs=1e-5)


def test_the_noise_image_is_the_top_outlier_and_scores_are_cached(engine: Engine, reports_planted: dict) -> None:
    o = outliers(engine, 5, workers=1)
    assert o.top[0].path == "odd/noise.png" and o.top[0].z > max(x.z for x in o.top[1:])
    assert o.count == engine.catalog.count() - 1  # the byte-identical copy counts once
    assert sum(o.histogram_counts) == o.count and len(o.histogram_edges) == len(o.histogram_counts) + 1
    assert (engine.index_dir / CACHE_FILE).exists()
    again = outliers(engine, 5, workers=1)  # from the cache: same scores
    assert [x.score for x in again.top] == pytest.approx([x.score for x in o.top])


def test_the_outlier_rule_flags_what_is_far_above_the_median_on_a_log_scale() -> None:
    scores = np.exp(np.random.default_rng(0).normal(-3, 0.2, 200))
    scores[:3] = [np.exp(-3 + 0.2 * 8), np.exp(-3 + 0.2 * 3), np.exp(-3 - 0.2 * 8)]
    z, med, mad = robust_z(scores)
    assert med == pytest.approx(-3, abs=0.05) and mad == pytest.approx(0.2 * 0.6745, rel=0.2)
    flagged = np.flatnonzero(z > 3.5)
    assert flagged.tolist() == [0]  # far above; 3 sigma is not enough, and low errors are never outliers
    assert (robust_z(np.full(10, 0.5))[0] == 0).all()  # all equal: nothing stands out


@pytest.mark.parametrize("k", [2, 16])
def test_a_pair_the_vectors_never_propose_is_found_by_its_hashes(engine: Engine, k: int) -> None:
    # The two images whose vectors are furthest apart are given the same hashes and detail
    # thumbnail (as a greyscale copy has its original's): only the hashes' own neighbours
    # (pairs.hash_pairs) can propose them. The tier has no crop cap, so the crop distances are
    # not computed and every per-pair array must still follow the added pairs.
    from dataclasses import replace

    from search.reports.scan import scan_images

    scan = scan_images(engine)
    ids, vecs = engine.snapshot().vectors.all_vectors()
    keep = np.isin(ids, scan.ids)
    ids, vecs = ids[keep], vecs[keep]
    sims = vecs @ vecs.T
    a, b = np.unravel_index(np.argmin(sims), sims.shape)
    pa, pb = (int(np.searchsorted(scan.ids, ids[x])) for x in (a, b))
    phashes, crops, details = scan.phashes.copy(), scan.crops.copy(), scan.details.copy()
    phashes[pb], crops[pb], details[pb] = phashes[pa], crops[pa], details[pa]
    forged = replace(scan, phashes=phashes, crops=crops, details=details)
    tier = Tier("hash-only", 0.999, "test", hamming=4)
    near = near_duplicates(engine, (tier,), k=k, scan=forged)
    groups = [{g.keeper.id, *(m.id for m in g.others)} for g in near.groups["hash-only"]]
    assert any({int(ids[a]), int(ids[b])} <= g for g in groups)
    for g in near.groups["hash-only"]:
        assert all((m.similarity or 0) >= 0.999 or (m.hamming is not None and m.hamming <= 4) for m in g.others)
