"""Ledoit-Wolf whitening (encoder/calibration.py): defined on few vectors, exact on many."""

from __future__ import annotations

import numpy as np

from encoder.calibration import fit_whitening


def _reference_shrinkage(x: np.ndarray) -> float:
    """The Ledoit-Wolf weight written out term by term, as in the paper."""
    n, d = x.shape
    c = x - x.mean(axis=0)
    s = c.T @ c / n
    mu = np.trace(s) / d
    delta = ((s - mu * np.eye(d)) ** 2).sum() / d
    beta = sum(((np.outer(v, v) - s) ** 2).sum() for v in c) / (n * n * d)
    return float(min(beta, delta) / delta)


def test_the_shrinkage_is_the_ledoit_wolf_weight() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((30, 8), (200, 16), (12, 40)):
        x = (rng.standard_normal((n, d)) * np.linspace(0.1, 3, d)).astype(np.float32)
        assert abs(fit_whitening(x).shrinkage - _reference_shrinkage(x.astype(np.float64))) < 1e-4


def test_many_vectors_are_whitened_few_are_only_centred() -> None:
    rng = np.random.default_rng(1)
    d = 24
    scales = np.geomspace(0.05, 5, d)
    many = (rng.standard_normal((20_000, d)) * scales + 3.0).astype(np.float32)
    w = fit_whitening(many)
    assert w.shrinkage < 0.01
    white = (many - w.mean) @ w.projection
    eig = np.linalg.eigvalsh(np.cov(white.T))
    raw = np.linalg.eigvalsh(np.cov(many.T))
    assert raw.max() / raw.min() > 5000 and eig.max() / eig.min() < 2  # the axes equalised
    assert eig.max() < 1.01  # the shrinkage only ever pulls the smallest axes in
    few = many[:6]
    wf = fit_whitening(few)
    assert wf.shrinkage > 0.3  # six vectors cannot support a 24-d covariance
    out = wf.apply(few)
    assert out.shape == few.shape and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.isfinite(out).all()


def test_centring_moves_random_pairs_to_zero() -> None:
    rng = np.random.default_rng(2)
    common = rng.standard_normal(32) * 4
    x = (common + rng.standard_normal((3000, 32))).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.median(np.einsum("nd,nd->n", unit[:1500], unit[1500:])) > 0.8  # the shared component
    w = fit_whitening(x).apply(x)
    assert abs(np.median(np.einsum("nd,nd->n", w[:1500], w[1500:]))) < 0.05


def test_degenerate_inputs() -> None:
    one = np.ones((1, 5), np.float32)
    assert np.allclose(fit_whitening(one).projection, np.eye(5))
    same = np.ones((10, 5), np.float32)  # no variance at all
    assert np.isfinite(fit_whitening(same).apply(same)).all()


def test_a_model_carries_its_calibration_and_the_encoder_applies_it(tiny_folder, tmp_path) -> None:
    from encoder import Encoder, ModelConfig, TrainConfig, train
    from encoder.calibration import CALIBRATION, load_calibration

    small = ModelConfig(image_size=32, channels=(8, 16, 32), latent_dim=16)
    plain, centred = tmp_path / "plain", tmp_path / "centred"
    # the mean pooling: continuous in the weights, so the Encoder's folded BatchNorm gives the
    # training-time vectors to 1e-5 (VLAD's hard assignment of a descriptor can flip on that)
    for out, kind in ((plain, "none"), (centred, "centre")):
        cfg = TrainConfig(epochs=2, batch_size=4, calibration=kind, pooling="mean")
        train(tiny_folder, out, small, cfg, progress=False)
    assert not (plain / CALIBRATION).exists() and (centred / CALIBRATION).exists()
    paths = sorted(tiny_folder.rglob("*.png"))
    raw = Encoder(plain, device="cpu").embed(paths)
    enc = Encoder(centred, device="cpu")
    cal = load_calibration(centred)
    assert np.allclose(cal.projection, np.eye(enc.dim))  # centring only
    # the same weights (same seed), so the calibrated vectors are the raw ones centred, unit length
    expected = (raw - cal.mean) / np.linalg.norm(raw - cal.mean, axis=1, keepdims=True)
    assert np.allclose(enc.embed(paths), expected, atol=1e-5)
    assert np.allclose(cal.mean, raw.mean(axis=0), atol=1e-4)  # fitted on the training images
    sims = raw @ raw.T
    off = ~np.eye(len(raw), dtype=bool)
    calibrated = enc.embed(paths) @ enc.embed(paths).T
    assert abs(np.median(calibrated[off])) < abs(np.median(sims[off]))  # unrelated pairs nearer 0
    assert Encoder(plain, device="cpu").model_id != enc.model_id
