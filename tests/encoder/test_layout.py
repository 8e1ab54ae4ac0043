"""Channels-last activations (encoder/device.py ``conv_layout``) change how fast, never what:
every variant gives the plain layout's outputs and gradients, training gives the plain layout's
model, and the Encoder the plain layout's vectors, to float rounding."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, fill_folder, sample_images

import encoder.device
from encoder import Encoder, ModelConfig, TrainConfig, create_model, list_models, load_image, train
from encoder.device import conv_layout

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = dict(image_size=32, channels=(8, 16), latent_dim=16, hidden=(64,), codebook_size=16, code_dim=8)


def test_cpu_batches_and_weights_are_channels_last() -> None:
    assert conv_layout(torch.device("cpu")) == torch.channels_last


@pytest.mark.parametrize("kind", list_models())
def test_every_variant_gives_the_plain_layouts_outputs_and_gradients(kind: str) -> None:
    torch.manual_seed(0)
    paths = sample_images(2)
    x = torch.from_numpy(np.stack([load_image(p, 32) for p in paths])).permute(0, 3, 1, 2).float() / 255
    plain = create_model(kind, labels=("birds", "letters", "chess"), **TINY).eval()
    last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x_plain, x_last = x.contiguous(), x.contiguous(memory_format=torch.channels_last)
    assert x_last.is_contiguous(memory_format=torch.channels_last) and not x_last.is_contiguous()

    outs = []
    for model, inp in ((plain, x_plain), (last, x_last)):
        z = model.encode(inp)
        recon = model.reconstruct(inp, None)
        ((recon - inp) ** 2).mean().backward()  # deterministic in eval mode: no sampling, no batch statistics
        grads = [p.grad.detach().contiguous() for p in model.parameters() if p.grad is not None]
        outs.append((z.detach(), recon.detach().contiguous(), grads))
    (z_a, r_a, g_a), (z_b, r_b, g_b) = outs
    torch.testing.assert_close(z_b, z_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r_b, r_a, rtol=1e-4, atol=1e-5)
    assert len(g_a) == len(g_b) > 0
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-6)


def _train(folder: Path, out: Path) -> tuple[float, dict[str, torch.Tensor]]:
    result = train(folder, out, ModelConfig(**TINY_CONFIG), TrainConfig(epochs=2, batch_size=4), progress=False)
    from safetensors.torch import load_file

    return result.best_val_loss, load_file(str(out / "model.safetensors"))


def test_training_and_vectors_match_the_plain_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = fill_folder(tmp_path / "imgs", 4)
    val_last, w_last = _train(folder, tmp_path / "last")
    with monkeypatch.context() as m:
        m.setattr(encoder.device, "CHANNELS_LAST", False)
        assert conv_layout(torch.device("cpu")) == torch.contiguous_format
        val_plain, w_plain = _train(folder, tmp_path / "plain")
        plain_vectors = Encoder(tmp_path / "last").embed(sample_images(2))
    # Same steps, same draws: only float rounding differs, which AdamW's normalised steps
    # amplify in parameters whose gradients are near zero (a BatchNorm bias moves ~2%); the
    # model as a whole stays within 1%, its validation loss within 0.1%.
    assert val_last == pytest.approx(val_plain, rel=1e-3)
    assert w_last.keys() == w_plain.keys()
    weights = [k for k in w_plain if w_plain[k].is_floating_point()]
    diff = torch.cat([(w_last[k] - w_plain[k]).flatten() for k in weights]).norm()
    assert float(diff / torch.cat([w_plain[k].flatten() for k in weights]).norm()) < 1e-2

    enc = Encoder(tmp_path / "last")
    assert enc.layout == torch.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in enc.model.parameters() if p.dim() == 4)
    vectors = enc.embed(sample_images(2))
    # a VLAD descriptor on a boundary between two words may change sides with the rounding
    np.testing.assert_allclose(vectors, plain_vectors, atol=1e-3)
    assert (vectors * plain_vectors).sum(1).min() > 0.9999
