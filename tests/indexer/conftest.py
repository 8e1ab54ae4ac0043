from __future__ import annotations

from pathlib import Path

import pytest

from encoder import ModelConfig, TrainConfig, train

TINY = ModelConfig(image_size=32, channels=(8, 16), latent_dim=16)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained once on a few sample images, shared by the indexer tests."""
    from conftest import sample_images

    folder = tmp_path_factory.mktemp("train")
    for p in sample_images(3):
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path_factory.mktemp("model")
    train(folder, out, TINY, TrainConfig(epochs=1, batch_size=4), progress=False)
    return out


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import sample_images

    folder = tmp_path_factory.mktemp("train2")
    for p in sample_images(3):
        (folder / p.name).write_bytes(p.read_bytes())
    out = tmp_path_factory.mktemp("model2")
    train(folder, out, TINY, TrainConfig(epochs=1, batch_size=4, seed=5), progress=False)
    return out
