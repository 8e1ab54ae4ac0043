"""Training: loss falls, outputs are written, seeds repeat, resume continues, Encoder embeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_images

from encoder import Encoder, ImageLoadError, ModelConfig, TrainConfig, TrainError, create_model, load_image, train
from encoder.augment import augment_batch

SMALL = dict(image_size=32, channels=(8, 16, 32), latent_dim=16)


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(np.stack([load_image(p, 32) for p in sample_images(4)])).permute(0, 3, 1, 2).float() / 255
    model = create_model("conv", **SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _, _ = model.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_train_writes_model_pictures_and_log(tiny_folder: Path, tmp_path: Path) -> None:
    (tiny_folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "model"
    result = train(tiny_folder, out, ModelConfig(**SMALL), TrainConfig(epochs=3, batch_size=4), progress=False)
    assert result.images == 12 and result.epochs_run == 3
    assert [Path(p).name for p, _ in result.skipped] == ["broken.jpg"]
    for name in ("model.safetensors", "config.json", "loss.png", "reconstructions.png", "train_log.json"):
        assert (out / name).stat().st_size > 0, name
    log = json.loads((out / "train_log.json").read_text())
    assert len(log["history"]) == 3 and log["skipped"][0]["reason"]
    assert all(np.isfinite(h["train_loss"]) for h in log["history"])


def test_same_seed_same_model(tiny_folder: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=4, seed=7)
    for name in ("a", "b"):
        train(tiny_folder, tmp_path / name, ModelConfig(**SMALL), cfg, progress=False)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b


def test_resume_continues_where_it_stopped(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    train(tiny_folder, out, ModelConfig(**SMALL), TrainConfig(epochs=2, batch_size=4, patience=99), progress=False)
    result = train(
        tiny_folder,
        out,
        ModelConfig(**SMALL),
        TrainConfig(epochs=4, batch_size=4, patience=99),
        resume=True,
        progress=False,
    )
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]


def test_too_few_images(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(TrainError, match="at least 2"):
        train(tmp_path / "only", tmp_path / "m", ModelConfig(**SMALL), TrainConfig(epochs=1), progress=False)


def test_encoder_embeds_unit_vectors_and_round_trips(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    train(tiny_folder, out, ModelConfig(**SMALL), TrainConfig(epochs=1, batch_size=4), progress=False)
    paths = sorted(tiny_folder.rglob("*.png"))
    enc = Encoder(out, device="cpu")
    v1 = enc.embed(paths)
    v2 = Encoder(out, device="cpu").embed(paths)
    assert v1.shape == (12, enc.dim) and enc.dim == 8 + 16 + 32 and v1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v1, v2)  # save -> load: bit-identical embeddings
    # batching does not change an image's vector beyond float rounding (which whitening scales up a little)
    assert np.allclose(enc.embed(paths[:1]), v1[:1], atol=1e-5)
    assert enc.calibration is not None  # fitted on the training images and saved with the model
    with pytest.raises(ImageLoadError):
        enc.embed([b"junk"])
    errs = enc.reconstruction_error(np.stack([enc.load(p) for p in paths]))
    assert errs.shape == (12,) and np.all(errs > 0)


def test_invariant_augmentation_keeps_target_clean() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    inp, target = augment_batch(x, "invariant", gen)
    assert inp.shape == target.shape == x.shape
    assert not torch.equal(inp, target)
    # the target is the (possibly flipped) original, never jittered
    for i in range(8):
        assert torch.equal(target[i], x[i]) or torch.equal(target[i], x[i].flip(-1))


def test_strong_augmentation_distorts_colour_and_keeps_target_clean() -> None:
    """'strong' (a pretraining experiment, docs/benchmarks.md stop 32): larger crops, saturation
    jitter and one view in five grey; the decoder's target is still the clean image."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 16, 16)
    inp, target = augment_batch(x, "strong", gen)
    for i in range(200):
        assert torch.equal(target[i], x[i]) or torch.equal(target[i], x[i].flip(-1))
    chroma = (inp - inp.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3))
    grey = int((chroma < 1e-5).sum())
    assert 20 <= grey <= 60  # about one in five; a random colour image is never grey by chance
    _, plain = augment_batch(x, "invariant", torch.Generator().manual_seed(0))
    assert (plain - plain.mean(1, keepdim=True)).abs().amax(dim=(1, 2, 3)).min() > 0.1  # 'invariant' keeps colour


def test_the_step_budget_grows_with_the_square_root_of_the_folder() -> None:
    from encoder.training import planned_steps

    assert planned_steps(150, 500) == planned_steps(1000, 500) == 500
    assert planned_steps(10_000, 500) == 1582  # 500 * sqrt(10): not 10x the steps for 10x the images
    assert planned_steps(1_000_000, 500) == 15_812


def test_an_early_stop_ends_the_progress_bar_at_100_percent(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # patience 0: the run stops after its first epoch of 6, however that epoch went.
    cfg = TrainConfig(epochs=6, batch_size=4, patience=0, augment="none")
    result = train(tiny_folder, tmp_path / "m", ModelConfig(**SMALL), cfg, progress=True)
    assert result.epochs_run < 6
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.lstrip().startswith("100%"), bar
