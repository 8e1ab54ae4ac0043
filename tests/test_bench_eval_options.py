"""The options of this stop's quality benches do what their docs say: ``base_model_eval.py --set``
changes TrainConfig fields and nothing else, and ``combined_features.py``'s projection keeps a
vector set whole when it has room for it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import bench_module

from encoder.errors import ConfigError


@pytest.fixture(scope="module")
def bme():
    yield from bench_module("base_model_eval")


@pytest.fixture(scope="module")
def cf():
    yield from bench_module("combined_features")


def test_set_takes_training_fields_with_their_types(bme) -> None:
    assert bme.fine_tune_overrides([]) == {}
    assert bme.fine_tune_overrides(["augment=strong", "min_steps=300", "lr=0.001"]) == {
        "augment": "strong",
        "min_steps": 300,
        "lr": 0.001,
    }


def test_set_refuses_a_model_field_and_a_malformed_item(bme) -> None:
    with pytest.raises(SystemExit, match="latent_dim"):
        bme.fine_tune_overrides(["latent_dim=3"])
    with pytest.raises(ConfigError, match="key=value"):
        bme.fine_tune_overrides(["augment"])


def test_a_fine_tune_asks_for_the_shape_of_the_model_it_starts_from(bme, tmp_path) -> None:
    from encoder import ModelConfig, create_model
    from encoder.base import start_config
    from encoder.checkpoint import save_model

    wide = ModelConfig(channels=(32, 64, 128, 256))
    save_model(create_model(wide), tmp_path / "wide")
    save_model(create_model(ModelConfig()), tmp_path / "default")
    assert bme.base_shape(tmp_path / "default") == {}
    shape = bme.base_shape(tmp_path / "wide")
    assert shape == {"channels": (32, 64, 128, 256)}
    # the configuration the evaluation builds from the spec is the one training accepts for that start
    assert start_config(ModelConfig(kind="conv", **shape), tmp_path / "wide") == wide
    with pytest.raises(ConfigError, match="asked for"):
        start_config(ModelConfig(kind="conv"), tmp_path / "wide")


def test_the_projection_is_centred_and_keeps_distances_when_the_rank_fits(cf) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5)) @ rng.standard_normal((5, 40)) + 3.0  # rank 5 in 40 dims
    y = cf._project(x, 8)
    assert y.shape == (20, 8)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-9)
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(y), d(x), atol=1e-8)
    # too few axes: distances shrink, the leading axis carries the most variance
    z = cf._project(x, 2)
    assert z.shape == (20, 2) and z[:, 0].var() >= z[:, 1].var() and (d(z) <= d(x) + 1e-9).all()


@pytest.fixture(scope="module")
def ce():
    yield from bench_module("calibration_eval")


def test_random_pairs_never_pair_an_image_with_itself(ce) -> None:
    # two orthogonal vectors: every pair of distinct rows has cosine 0; a self-pair would read 1
    assert ce.median_random_cosine(np.eye(2, dtype=np.float32), seed=0, pairs=1000) == 0.0
    # four copies of one vector and one opposite: most distinct pairs read 1
    v = np.array([[1.0, 0], [1, 0], [1, 0], [1, 0], [-1, 0]], dtype=np.float32)
    assert ce.median_random_cosine(v, seed=1, pairs=1000) == 1.0


@pytest.fixture(scope="module")
def ms():
    yield from bench_module("multiscale_eval")


def test_one_scale_is_the_products_vlad_and_more_scales_pool_their_locations(ms) -> None:
    import torch

    from encoder import ModelConfig
    from encoder.registry import create_model
    from encoder.vlad import Vlad, local_descriptors, stage_maps

    torch.manual_seed(0)
    model = create_model(ModelConfig(image_size=32, channels=(8, 16), latent_dim=16)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        own = stage_maps(x, model.trunk.maps(x), colour=True)
        one = ms.multiscale_maps(model.trunk, x, (32,))
        two = ms.multiscale_maps(model.trunk, x, (32, 16))
        small = stage_maps(ms.scaled(x, 16), model.trunk.maps(ms.scaled(x, 16)), colour=True)
    assert len(one) == len(two) == len(own)
    words = tuple(torch.rand(4, m.shape[1]) for m in own)
    vlad = Vlad(words, torch.zeros(sum(4 * m.shape[1] for m in own)), torch.eye(sum(4 * m.shape[1] for m in own)))
    # one scale: the same VLAD as the product's maps give
    torch.testing.assert_close(vlad.raw(one), vlad.raw(own))
    # two scales: each stage's descriptors are the two scales' descriptors, side by side
    for j in range(len(own)):
        both = torch.cat([local_descriptors(own[j]), local_descriptors(small[j])], dim=1)
        torch.testing.assert_close(local_descriptors(two[j]), both)
    assert not torch.allclose(vlad.raw(two), vlad.raw(one))
