"""The model: shapes, no NaNs, registry, checkpoints that round-trip exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encoder import CheckpointError, ModelConfig, create_model, list_models, load_model, save_model


@pytest.mark.parametrize("size,latent", [(32, 8), (64, 128), (96, 64), (128, 256)])
@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
def test_shapes(size: int, latent: int, upsample: str) -> None:
    model = create_model("conv", image_size=size, latent_dim=latent, upsample=upsample).eval()
    x = torch.rand(3, 3, size, size)
    z = model.latent(x)  # what the decoder reads
    y = model.decode(z)
    assert z.shape == (3, latent)
    assert y.shape == x.shape
    assert model.encode(x).shape == (3, model.embedding_dim)  # the search vector
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_pool_downsampling() -> None:
    model = create_model("conv", image_size=32, downsample="pool", channels=(8, 16))
    assert model.latent(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 8 + 16)  # pooled stages


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        create_model("conv", image_size=30)
    with pytest.raises(ValueError, match="known: .*conv"):
        create_model("no-such-model")


def test_registry_lists_conv() -> None:
    assert "conv" in list_models()


def test_config_json_round_trip() -> None:
    cfg = ModelConfig(image_size=32, channels=(8, 16), latent_dim=12)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"bogus": 1})


def test_save_load_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("conv", image_size=32, channels=(8, 16), latent_dim=16)
    model.train()
    model.training_loss(torch.rand(4, 3, 32, 32))  # move BatchNorm running stats off their init
    model.eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))
    # nothing in the directory is a pickle
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path)
    model = create_model("conv", image_size=32, channels=(8, 16), latent_dim=16)
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")
