"""The pair scale: a similarity's rank among the collection's random pairs (encoder/pair_scale.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import fill_folder

from indexer import build_index
from search import pair_scale
from search.engine import Engine
from search.pair_scale import MAX_PAIRS, PairScale, fit_pair_scale, top_share


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, d: int = 32, clusters: int = 12) -> np.ndarray:
    """Unit vectors around a few centres: pairs of one cluster score high, the rest near 0."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((clusters, d))
    return unit(centres[rng.integers(0, clusters, n)] + 0.8 * rng.standard_normal((n, d)))


def test_small_collections_use_every_pair() -> None:
    v = unit(np.random.default_rng(0).standard_normal((20, 8)))
    scale = fit_pair_scale(v)
    i, j = np.triu_indices(20, k=1)
    assert scale.pairs == 190
    np.testing.assert_allclose(scale.cosines, np.sort((v[i] * v[j]).sum(1)), atol=1e-6)
    assert fit_pair_scale(v[:1]) is None and fit_pair_scale(v[:0]) is None


def test_large_collections_are_sampled_without_self_pairs() -> None:
    v = unit(np.random.default_rng(1).standard_normal((2000, 64)))
    scale = fit_pair_scale(v)
    assert scale.pairs == MAX_PAIRS
    assert np.all(np.diff(scale.cosines) >= 0)
    # an image paired with itself would score 1; distinct random 64-d directions stay far below
    assert scale.cosines.max() < 0.8


def test_percentile_edges_and_order() -> None:
    scale = PairScale(np.array([-0.5, 0.0, 0.0, 0.5], np.float32))
    np.testing.assert_allclose(scale.percentile([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0]), [0, 0, 25, 75, 75, 100])


def test_the_meaning_holds_on_pairs_it_was_not_fitted_on() -> None:
    """Fitted on one draw of a collection, the percentiles of another draw's random pairs are
    uniform (what "50: a typical unrelated pair" promises), and a near-copy ranks at the top."""
    scale = fit_pair_scale(clustered(3000, seed=0))
    other = clustered(3000, seed=1)
    rng = np.random.default_rng(2)
    i, j = rng.integers(0, 3000, 20000), rng.integers(0, 3000, 20000)
    keep = i != j
    ranks = scale.percentile((other[i[keep]] * other[j[keep]]).sum(1))
    for q in (10, 25, 50, 75, 90):
        assert abs(np.percentile(ranks, q) - q) < 2.0, q
    near_copies = unit(other[:50] + 0.05 * rng.standard_normal(other[:50].shape))
    assert np.all(scale.percentile((near_copies * other[:50]).sum(1)) > 99.5)


def test_an_index_scale_is_every_pair_of_its_vectors(tmp_path: Path, search_model: Path, monkeypatch) -> None:
    """Read off the published vectors: every pair for a small index; pairs among a seeded sample of
    ``SAMPLE_IMAGES`` images for a larger one, the same sample every time."""
    folder = fill_folder(tmp_path / "images")  # 12 images
    build_index(folder, model_dir=search_model, progress=False, workers=1)
    with Engine(folder / ".lookalike", device="cpu") as eng:
        snap = eng.snapshot()
        ids, vectors = snap.vectors.all_vectors()
        scale = snap.pair_scale
    assert len(ids) == 12 and scale.pairs == 66
    i, j = np.triu_indices(12, k=1)
    np.testing.assert_allclose(scale.cosines, np.sort((vectors[i] * vectors[j]).sum(1)), atol=1e-6)

    monkeypatch.setattr(pair_scale, "SAMPLE_IMAGES", 5)
    with Engine(folder / ".lookalike", device="cpu") as eng:
        small = eng.snapshot().pair_scale
        assert small.pairs == 10 and set(small.cosines.tolist()) <= set(scale.cosines.tolist())
        np.testing.assert_array_equal(pair_scale.index_pair_scale(eng.snapshot().vectors).cosines, small.cosines)


def test_top_share_reads_as_people_read_it() -> None:
    assert [top_share(p) for p in (None, 50.0, 91.5, 99.7, 99.93, 99.995, 100.0)] == [
        "",
        "top 50%",
        "top 8.5%",
        "top 0.3%",
        "top 0.07%",
        "top <0.01%",
        "top <0.01%",
    ]


def test_summary_reads_the_scale_backwards() -> None:
    scale = PairScale(np.linspace(-1, 1, 2001, dtype=np.float32))
    assert scale.summary() == {
        "pairs": 2001,
        "median": 0.0,
        "top_10_percent": 0.8,
        "top_1_percent": 0.98,
        "top_0_1_percent": 0.998,
    }
    for p in (10.0, 50.0, 99.0):
        assert abs(scale.percentile([scale.similarity_at(p) + 1e-6])[0] - p) < 0.1
