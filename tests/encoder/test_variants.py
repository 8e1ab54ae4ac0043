"""Every registered variant: shapes, no NaNs, loss falls on data/, save/load round trip, usable by Encoder.

Plus what is particular to each: tied weights, corruption, the sparsity and contractive
penalties against their formulas, the VAE's mean as search vector, the EMA codebook,
and the conditional VAE without a label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_images

from encoder import Encoder, ModelConfig, create_model, list_models, load_image, load_model, save_model
from encoder.variants import gaussian_kl, kl_sparsity

pytestmark = pytest.mark.usefixtures("torch_one_thread")


TINY = dict(image_size=32, channels=(8, 16), latent_dim=16, hidden=(64,), codebook_size=16, code_dim=8)


def _images(n_per_class: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    paths = sample_images(n_per_class)
    x = torch.from_numpy(np.stack([load_image(p, 32) for p in paths])).permute(0, 3, 1, 2).float() / 255
    labels = torch.arange(len(paths)) // n_per_class
    return x, labels


def test_every_kind_of_the_issue_is_registered() -> None:
    expected = {"conv", "dense", "denoising", "sparse", "contractive", "vae", "vqvae", "cvae"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("kind", list_models())
def test_variant_trains_round_trips_and_embeds(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, labels = _images()
    model = create_model(kind, labels=("birds", "letters", "chess"), **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, parts, recon = model.training_loss(x, x, labels)
        assert recon.shape == x.shape and torch.isfinite(recon).all()
        assert all(np.isfinite(v) for v in parts.values()) and "mse" in parts
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert min(losses[-2:]) < losses[0], losses

    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (len(x), model.embedding_dim) and torch.isfinite(z).all()
        assert model.reconstruct(x, None).shape == x.shape

    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded.reconstruct(x, None), model.reconstruct(x, None))
    # Indexing and search go through Encoder alone: unit vectors and an outlier score.
    enc = Encoder(tmp_path / "m", device="cpu")
    pixels = (x.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    vectors = enc.embed_pixels(pixels)
    assert vectors.shape == (len(x), enc.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert enc.reconstruction_error(pixels).shape == (len(x),)


def test_dense_tied_shares_the_encoder_weights() -> None:
    free = create_model("dense", **TINY)
    tied = create_model("dense", tied=True, **TINY)
    assert sum(p.numel() for p in tied.parameters()) < 0.6 * sum(p.numel() for p in free.parameters())
    assert not any(k.startswith("decoder_layers") for k in tied.state_dict())
    z = tied.encode(torch.rand(2, 3, 32, 32))
    tied.encoder_layers[0].weight.data.zero_()  # the decoder's last layer is this weight, transposed
    out = tied.decode(z)
    assert torch.allclose(out, torch.sigmoid(tied.decoder_biases[0]).view(1, 3, 32, 32).expand_as(out))


@pytest.mark.parametrize("noise", ["gaussian", "mask"])
def test_denoising_corrupts_only_in_training(noise: str) -> None:
    model = create_model("denoising", noise=noise, noise_std=0.3, mask_prob=0.5, **TINY)
    x = torch.full((2, 3, 32, 32), 0.5)
    noisy = model.corrupt(x)
    assert not torch.equal(noisy, x) and noisy.min() >= 0 and noisy.max() <= 1
    if noise == "mask":
        assert 0.3 < float((noisy == 0).float().mean()) < 0.7


def test_sparse_kl_penalty_matches_the_formula() -> None:
    h = torch.tensor([[0.1, 0.5], [0.3, 0.7]])
    rho = 0.05
    rho_hat = h.mean(0)
    expected = sum(rho * np.log(rho / r) + (1 - rho) * np.log((1 - rho) / (1 - r)) for r in rho_hat.tolist())
    assert float(kl_sparsity(h, rho)) == pytest.approx(expected, rel=1e-5)
    assert float(kl_sparsity(torch.full((4, 3), rho), rho)) == pytest.approx(0.0, abs=1e-6)
    model = create_model("sparse", sparsity="kl", **TINY).eval()
    code = model.latent(torch.rand(2, 3, 32, 32))
    assert code.min() > 0 and code.max() < 1  # sigmoid codes for the KL penalty


def test_contractive_estimate_is_the_jacobian_frobenius_norm() -> None:
    torch.manual_seed(0)
    model = create_model("contractive", image_size=8, channels=(4,), latent_dim=6).eval()
    x = torch.rand(1, 3, 8, 8)
    jac = torch.autograd.functional.jacobian(lambda t: model.latent(t), x)  # (1, 6, 1, 3, 8, 8)
    exact = float(jac.pow(2).sum())
    estimates = []
    for _ in range(200):
        xi = x.clone().requires_grad_(True)
        h = model.latent(xi)
        (g,) = torch.autograd.grad(h, xi, torch.randn_like(h))
        estimates.append(float(g.pow(2).sum()))
    assert np.mean(estimates) == pytest.approx(exact, rel=0.2)
    model.train()
    _, parts, _ = model.training_loss(torch.rand(3, 3, 8, 8))
    assert parts["jacobian_frobenius_sq"] > 0


def test_vae_searches_by_the_mean_and_samples() -> None:
    torch.manual_seed(0)
    model = create_model("vae", beta=4.0, **TINY).eval()
    x = torch.rand(3, 3, 32, 32)
    mu, logvar = model.posterior(x)
    assert torch.equal(model.encode(x), mu) and torch.equal(model.encode(x), model.encode(x))
    assert torch.allclose(gaussian_kl(torch.zeros(1, 4), torch.zeros(1, 4)), torch.zeros(1))
    assert float(gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4))) == pytest.approx(2.0)
    model.train()
    _, parts, _ = model.training_loss(x)
    assert parts["kl"] > 0
    with torch.no_grad():
        assert model.sample(5).shape == (5, 3, 32, 32)


def test_vqvae_codes_codebook_ema_and_usage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("vqvae", **TINY)
    assert {"codebook.embed", "codebook.cluster_size", "codebook.embed_avg"} <= set(model.state_dict())
    assert not any("codebook" in name for name, _ in model.named_parameters())  # EMA, not gradients
    x, _ = _images()
    before = model.codebook.embed.clone()
    _, parts, _ = model.training_loss(x)
    assert not torch.equal(before, model.codebook.embed)  # the EMA update moved the codes
    assert 0 < parts["codes_used"] <= 1 and parts["perplexity"] >= 1
    model.eval()
    codes = model.codes(x)
    assert codes.shape == (len(x), 8, 8) and codes.dtype == torch.int64
    with torch.no_grad():
        assert torch.allclose(model.decode_codes(codes), model.reconstruct(x))
    assert model.code_bits == 8 * 8 * 4  # 64 cells of log2(16) bits
    assert 0 < model.codebook_usage(x)["codes_used"] <= 1
    save_model(model, tmp_path / "vq")
    assert torch.equal(load_model(tmp_path / "vq").codebook.embed, model.codebook.embed)


def test_cvae_without_a_label_and_with_one() -> None:
    torch.manual_seed(0)
    model = create_model("cvae", labels=("a", "b"), **TINY).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert model.reconstruct(x, None).shape == x.shape
        with_label = model.reconstruct(x, torch.tensor([0, 1]))
        assert not torch.equal(with_label, model.reconstruct(x, None))
        out_of_range = model.reconstruct(x, torch.tensor([7, -1]))  # unknown ids mean "no label"
        assert torch.equal(out_of_range, model.reconstruct(x, None))
        assert model.sample(3, torch.full((3,), model.label_id("b"))).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown label"):
        model.label_id("zebra")


def test_conv_search_vector_is_multiscale_or_latent() -> None:
    x = torch.rand(2, 3, 32, 32)
    multi = create_model("conv", embedding="multiscale", **TINY).eval()
    assert multi.embedding_dim == 8 + 16
    z = multi.encode(x)
    assert z.shape == (2, 24)
    assert torch.allclose(z[:, :8].norm(dim=1), torch.ones(2)) and torch.allclose(z[:, 8:].norm(dim=1), torch.ones(2))
    assert multi.reconstruct(x).shape == x.shape  # the decoder still reads the latent
    assert create_model("conv", **TINY).config.embedding == "multiscale"  # the default
    latent = create_model("conv", embedding="latent", **TINY).eval()
    assert latent.encode(x).shape == (2, 16) and torch.equal(latent.encode(x), latent.latent(x))
    hybrid = create_model("conv", embedding="hybrid", **TINY).eval()
    assert hybrid.encode(x).shape == (2, 24 + 16) == (2, hybrid.embedding_dim)
    # A config saved before the field existed searches by the latent, as it did.
    old = {k: v for k, v in multi.config.to_dict().items() if k != "embedding"}
    assert ModelConfig.from_dict(old).embedding == "latent"
    assert ModelConfig.from_dict(multi.config.to_dict()).embedding == "multiscale"
    with pytest.raises(ValueError, match="embedding"):
        create_model("conv", embedding="nope", **TINY)


def test_cvae_label_dropout_is_one_draw_a_batch_and_never_switched_off() -> None:
    """training_loss draws the dropout once for the posterior and the decoder, without
    touching ``label_dropout``: a call made while it runs (another thread, a hook) still drops."""
    torch.manual_seed(0)
    model = create_model("cvae", labels=("a", "b"), **TINY).train()
    model.label_dropout = 0.5
    seen: list[torch.Tensor] = []
    during: list[float] = []

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        seen.append(args[0].clone())
        if len(seen) == 1:  # a nested call, mid-loss
            ids = model.label_ids(torch.zeros(4000, dtype=torch.long), 4000, torch.device("cpu"))
            during.append(float((ids == model.unknown).float().mean()))

    model.label_embedding.register_forward_hook(hook)
    labels = torch.tensor([0, 1] * 32)
    model.training_loss(torch.rand(64, 3, 32, 32), None, labels)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])  # posterior and decoder: the same draw
    assert 0.3 < float((seen[0] == model.unknown).float().mean()) < 0.7
    assert during and 0.45 < during[0] < 0.55  # dropout stayed on for the nested call
    assert model.label_dropout == 0.5
