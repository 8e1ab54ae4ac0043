from __future__ import annotations

from pathlib import Path

import pytest
from conftest import train_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained once on a few sample images, shared by the indexer tests."""
    return train_tiny(tmp_path_factory, "model")


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another model (another seed): different weights, so a different model id."""
    return train_tiny(tmp_path_factory, "model2", seed=5)
