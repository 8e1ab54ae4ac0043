"""Training from a starting model (`TrainConfig.init_from`): the weights it starts from, the
configuration it keeps, the refusals, and the shipped base model when there is one."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import TINY_CONFIG, fill_folder

from encoder import ModelConfig, TrainConfig, train
from encoder.checkpoint import load_model, read_config
from encoder.errors import ConfigError


@pytest.fixture
def start(tmp_path, torch_one_thread):
    folder = fill_folder(tmp_path / "a", 2)
    out = tmp_path / "start"
    train(folder, out, ModelConfig(**TINY_CONFIG), TrainConfig(epochs=2, batch_size=4), progress=False)
    return out


def test_training_starts_from_the_given_weights(tmp_path, start, torch_one_thread) -> None:
    folder = fill_folder(tmp_path / "b", 2, classes=("birds", "chess"))
    # lr 0: nothing moves, so the result is the start exactly (BatchNorm statistics aside: eval mode
    # uses the running ones, which training on another folder updates).
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.0, init_from=str(start))
    out = train(folder, tmp_path / "tuned", config=cfg, progress=False).out
    a, b = load_model(start).state_dict(), load_model(out).state_dict()
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert weights and all(torch.equal(a[k], b[k]) for k in weights)
    # from scratch the same run ends elsewhere: the equality above is the start's doing
    fresh = train(folder, tmp_path / "fresh", ModelConfig(**TINY_CONFIG), TrainConfig(epochs=1, batch_size=4, lr=0.0))
    c = load_model(fresh.out).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in weights)
    # the model says what it started from: that directory and its weights' hash; fresh: nothing
    sha = hashlib.sha256((start / "model.safetensors").read_bytes()).hexdigest()
    assert read_config(out)[1]["started_from"] == {"model": str(start.resolve()), "weights_sha256": sha}
    assert read_config(fresh.out)[1]["started_from"] is None


def test_the_start_decides_the_model_configuration(tmp_path, start, torch_one_thread) -> None:
    folder = fill_folder(tmp_path / "b", 2)
    out = train(folder, tmp_path / "tuned", config=TrainConfig(epochs=1, init_from=str(start)), progress=False).out
    assert read_config(out)[0] == read_config(start)[0]
    with pytest.raises(ConfigError, match="init_from"):
        train(folder, tmp_path / "x", ModelConfig(image_size=64), TrainConfig(epochs=1, init_from=str(start)))


def test_a_folder_without_a_model_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model directory"):
        train(tmp_path, tmp_path / "m", config=TrainConfig(init_from=str(tmp_path / "empty")))


def test_the_shipped_base_model_loads_and_embeds() -> None:
    from encoder.base import BASE_MODEL_DIR, base_model_dir

    if not (BASE_MODEL_DIR / "model.safetensors").exists():
        with pytest.raises(ConfigError, match="ships no base model"):
            base_model_dir()
        return
    model = load_model(base_model_dir())
    cfg, meta = read_config(base_model_dir())
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        z = model.encode(x)
    assert z.shape == (2, model.embedding_dim) and torch.isfinite(z).all()
    assert (BASE_MODEL_DIR / "PROVENANCE.md").exists()


def test_auto_starts_from_the_base_only_for_its_own_configuration() -> None:
    from encoder.base import BASE_MODEL_DIR, resolve_init

    shipped = (BASE_MODEL_DIR / "model.safetensors").exists()
    assert resolve_init("auto", ModelConfig(**TINY_CONFIG)) is None  # another model: random weights
    assert resolve_init("auto", None) == (BASE_MODEL_DIR if shipped else None)
    assert resolve_init("auto", ModelConfig()) == (BASE_MODEL_DIR if shipped else None)
    assert resolve_init(None) is None
    # `--init-from none` on the command line: random weights even for the base model's configuration
    assert resolve_init("none", ModelConfig()) is None
