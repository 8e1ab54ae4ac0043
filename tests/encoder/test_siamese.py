"""The siamese (VICReg) term: what each part measures, and that training with it runs and
makes two views of an image closer than reconstruction alone does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder import ModelConfig, TrainConfig, train
from encoder.errors import ConfigError
from encoder.siamese import vicreg_loss


def test_each_part_measures_what_it_says() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 8, generator=g) * 2
    loss, parts = vicreg_loss(z, z)
    assert parts["invariance"] == 0.0  # identical views
    assert parts["variance"] == pytest.approx(0.0, abs=1e-3)  # std ~2 > 1 everywhere
    assert parts["covariance"] < 1.5  # independent dimensions: sampling noise only
    collapsed = torch.ones(256, 8) + 1e-3 * torch.randn(256, 8, generator=g)
    _, parts = vicreg_loss(collapsed, collapsed)
    assert parts["variance"] > 0.9  # every vector the same point: the hinge is near 1
    twin = torch.randn(256, 1, generator=g).repeat(1, 8) * 2  # all dimensions one signal
    _, parts = vicreg_loss(twin, twin)
    assert parts["covariance"] > 10
    _, parts = vicreg_loss(z, z + torch.randn(256, 8, generator=g))
    assert parts["invariance"] == pytest.approx(1.0, rel=0.2)


def test_a_bad_weight_or_no_augmentation_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="siamese"):
        train(tmp_path, tmp_path / "m", config=TrainConfig(siamese=-1.0))
    with pytest.raises(ConfigError, match="augment"):
        train(tmp_path, tmp_path / "m", config=TrainConfig(siamese=0.1, augment="none"))
    with pytest.raises(ConfigError, match="unknown augment mode 'fancy'"):  # before any image is read
        train(tmp_path, tmp_path / "m", config=TrainConfig(augment="fancy"))


def test_training_with_the_term_runs_and_pulls_views_together(tmp_path, torch_one_thread) -> None:
    import shutil

    from conftest import sample_images

    from encoder.augment import augment_batch
    from encoder.checkpoint import load_model
    from encoder.images import load_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sample_images(4):
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    cfg = ModelConfig(image_size=32, channels=(8, 16), latent_dim=16)
    gaps = {}
    for w in (0.0, 0.05):
        out = tmp_path / f"m{w}"
        train(folder, out, cfg, TrainConfig(epochs=12, batch_size=6, seed=0, siamese=w), progress=False)
        model = load_model(out).eval()
        x = torch.from_numpy(np.stack([load_image(p, 32) for p in sorted(folder.iterdir())])).permute(0, 3, 1, 2)
        x = x.float() / 255
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            a = torch.nn.functional.normalize(model.encode(augment_batch(x, "invariant", gen)[0]), dim=1)
            b = torch.nn.functional.normalize(model.encode(augment_batch(x, "invariant", gen)[0]), dim=1)
            rest = torch.nn.functional.normalize(model.encode(x), dim=1)
        same = (a * b).sum(1).mean()
        others = (rest @ rest.T).fill_diagonal_(0).sum() / (len(x) * (len(x) - 1))
        gaps[w] = float(same - others)  # views of one image against different images
    assert gaps[0.05] > gaps[0.0], gaps
