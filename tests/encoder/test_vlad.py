"""The VLAD search vector (encoder/vlad.py): the aggregation against a written-out reference, its
invariance to where things are, the fit on few and on many images, and a trained model that uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.errors import CheckpointError
from encoder.vlad import VLAD_FILE, Vlad, aggregate, fit_vlad, load_vlad, local_descriptors, save_vlad


def _reference_vlad(desc: np.ndarray, words: np.ndarray) -> np.ndarray:
    """VLAD of one image's (L, C) descriptors, term by term as in Jegou et al. and Arandjelovic."""
    k, c = words.shape
    v = np.zeros((k, c))
    for d in desc:
        j = int(np.argmin(((words - d) ** 2).sum(1)))
        v[j] += d - words[j]
    v = np.sign(v) * np.sqrt(np.abs(v))
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(norms > 1e-6, v / np.maximum(norms, 1e-6), v)
    v = v.ravel()
    return v / np.linalg.norm(v)


def test_aggregate_is_vlad_term_by_term() -> None:
    rng = np.random.default_rng(0)
    fmap = torch.from_numpy(rng.random((3, 6, 5, 4), dtype=np.float32))
    desc = local_descriptors(fmap)
    assert desc.shape == (3, 20, 6)
    assert torch.allclose(desc.norm(dim=2), torch.ones(3, 20), atol=1e-5)
    words = torch.from_numpy(rng.random((7, 6), dtype=np.float32))
    got = aggregate(desc, words).numpy()
    for i in range(3):
        assert np.allclose(got[i], _reference_vlad(desc[i].numpy().astype(np.float64), words.numpy()), atol=1e-5)


def test_a_batch_assigned_in_pieces_is_each_image_on_its_own() -> None:
    """On a CPU the assignment goes a few images at a time (ROWS_AT_ONCE descriptors); a batch that
    spans several pieces, the last one short, must give every image its own VLAD, no slot shifted."""
    from encoder.vlad import ROWS_AT_ONCE

    rng = np.random.default_rng(1)
    side = 32  # 1,024 descriptors an image: several images a piece, several pieces a batch
    per_piece = ROWS_AT_ONCE // side**2
    n = 2 * per_piece + 1
    fmap = torch.from_numpy(rng.random((n, 4, side, side), dtype=np.float32))
    desc = local_descriptors(fmap)
    words = torch.from_numpy(rng.random((8, 4), dtype=np.float32))
    got = aggregate(desc, words).numpy()
    for i in (0, per_piece - 1, per_piece, n - 1):
        assert np.allclose(got[i], _reference_vlad(desc[i].numpy().astype(np.float64), words.numpy()), atol=1e-5)
    alone = torch.cat([aggregate(desc[i : i + 1], words) for i in range(n)]).numpy()
    assert np.array_equal(got, alone)


def test_the_square_roots_are_correctly_rounded_in_place() -> None:
    """The descriptors' square roots are IEEE's correctly rounded ones on a CPU (torch's own float32
    sqrt is a last-bit approximation there for about a sixth of all values), zeros included."""
    from encoder.vlad import sqrt_

    x = np.random.default_rng(2).random(200_000, dtype=np.float32) ** 4
    x[::7] = 0.0
    t = torch.from_numpy(x.copy())
    out = sqrt_(t)
    assert out.data_ptr() == t.data_ptr()  # in place: no second buffer the size of a batch's maps
    assert np.array_equal(out.numpy(), np.sqrt(x.astype(np.float64)).astype(np.float32))


def test_a_flat_area_keeps_its_small_residual_exact() -> None:
    """A white background is a thousand identical descriptors next to a word a rounding away from
    them (k-means centres are fitted in float64, stored in float32). Their residuals sum to ~1e-4;
    summing the descriptors first and subtracting count x word loses that to float32 cancellation,
    and the intra-normalisation turned the rounding noise into a unit block in a direction that
    changed with the count (stop 32: 61 of 4,096 blocks of 64 Tux Paint stamps)."""
    grey = np.full((1, 3, 32, 32), 0.8, dtype=np.float32)
    grey[:, :, 12:16, 12:16] = np.random.default_rng(2).random((1, 3, 4, 4), dtype=np.float32)
    desc = local_descriptors(torch.from_numpy(grey))
    white = desc[0, 0].numpy()
    near = np.nextafter(np.nextafter(white, np.float32(1)), np.float32(1))  # two roundings away
    near[1] = np.nextafter(white[1], np.float32(0))
    words = np.stack([near, *np.random.default_rng(3).random((4, 3), dtype=np.float32)])
    for count in (1000, 1003, 997):  # the same background, a few pixels more or less of it
        d = desc[:, :count] if count <= 1000 else torch.cat([desc, desc[:, : count - 1024 + 24]], 1)
        got = aggregate(d, torch.from_numpy(words)).numpy()[0]
        want = _reference_vlad(d[0].numpy().astype(np.float64), words.astype(np.float64))
        assert np.allclose(got, want, atol=1e-4), count


def test_where_things_are_does_not_matter_what_they_are_does() -> None:
    """The aggregation is orderless: a flipped or shuffled map gives the same vector; other content does not."""
    rng = np.random.default_rng(1)
    fmap = torch.from_numpy(rng.random((2, 8, 6, 6), dtype=np.float32))
    words = local_descriptors(fmap).reshape(-1, 8)[::9][:5].clone()
    a = aggregate(local_descriptors(fmap), words)
    assert torch.allclose(a, aggregate(local_descriptors(fmap.flip(3)), words), atol=1e-6)
    assert torch.allclose(a, aggregate(local_descriptors(fmap.transpose(2, 3)), words), atol=1e-6)
    other = torch.from_numpy(rng.random((2, 8, 6, 6), dtype=np.float32) ** 3)
    assert not torch.allclose(a, aggregate(local_descriptors(other), words), atol=1e-2)


def _maps_source(n: int, seed: int = 0):
    """Stage maps of `n` synthetic images: two stages, as a trunk gives them, deterministic per image."""
    rng = np.random.default_rng(seed)
    s1 = torch.from_numpy(rng.random((n, 4, 8, 8), dtype=np.float32))
    s2 = torch.from_numpy(rng.random((n, 6, 4, 4), dtype=np.float32) ** 2)
    return lambda idx: [s1[torch.from_numpy(np.asarray(idx))], s2[torch.from_numpy(np.asarray(idx))]]


def test_fit_on_many_images_projects_on_principal_axes() -> None:
    maps_of = _maps_source(300)
    vlad = fit_vlad(maps_of, 300, dim=16, words=8)
    assert [w.shape for w in vlad.words] == [(8, 4), (8, 6)]
    assert vlad.mean.shape == (8 * 4 + 8 * 6,) and vlad.projection.shape == (80, 16) and vlad.dim == 16
    p = vlad.projection.double()
    assert torch.allclose(p.T @ p, torch.eye(16, dtype=torch.float64), atol=1e-4)  # orthonormal axes
    out = vlad(maps_of(np.arange(300))).double()
    assert torch.allclose(out.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-4)  # centred
    var = out.var(0)
    assert (var[:-1] >= var[1:] - 1e-6).all()  # the first axes carry the most variance


def test_fit_on_fewer_images_than_dimensions_keeps_the_dimension() -> None:
    maps_of = _maps_source(5)
    vlad = fit_vlad(maps_of, 5, dim=16, words=8)
    assert vlad.dim == 16
    out = vlad(maps_of(np.arange(5)))
    assert torch.isfinite(out).all()
    assert (out[:, 4:].abs() < 1e-6).all()  # 5 centred images span 4 axes; the rest is zero
    assert (out[:, :4].abs().sum(1) > 0).all()


def test_save_and_load_round_trip_and_damage(tmp_path: Path) -> None:
    maps_of = _maps_source(40)
    vlad = fit_vlad(maps_of, 40, dim=8, words=4)
    save_vlad(vlad, tmp_path)
    back = load_vlad(tmp_path)
    assert back is not None and back.dim == 8
    maps = maps_of(np.arange(40))
    assert torch.allclose(vlad(maps), back(maps))
    assert load_vlad(tmp_path / "missing") is None
    (tmp_path / VLAD_FILE).write_bytes((tmp_path / VLAD_FILE).read_bytes()[:100])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_vlad(tmp_path)
    bad = Vlad(vlad.words, vlad.mean[:-1], vlad.projection)
    save_vlad(bad, tmp_path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_vlad(tmp_path)
    save_vlad(Vlad(vlad.words, vlad.mean, vlad.projection, colour=True), tmp_path)  # 4-channel "colours"
    with pytest.raises(CheckpointError, match="not colours"):
        load_vlad(tmp_path)


def test_the_colour_stage_sees_chromaticity_and_older_files_have_none(tmp_path: Path) -> None:
    """The colour stage's descriptors do not change with brightness and do with hue; a pooling
    saved before the stage existed (no metadata) loads without it and pools the trunk's maps alone."""
    from safetensors.torch import save_file

    from encoder.vlad import colour_map

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((2, 3, 8, 8), dtype=np.float32)) * 0.9 + 0.05
    d = local_descriptors(colour_map(x))
    assert d.shape == (2, 16, 3)
    assert torch.allclose(d, local_descriptors(colour_map(x * 0.5)), atol=1e-6)  # a darker copy: same colours
    assert not torch.allclose(d, local_descriptors(colour_map(x.flip(1))), atol=1e-2)  # red and blue swapped
    vlad = fit_vlad(_maps_source(40), 40, dim=8, words=4)
    assert not vlad.colour and vlad.stages(x, ["trunk"]) == ["trunk"]
    tensors = {f"words.{i}": w for i, w in enumerate(vlad.words)}
    save_file({**tensors, "mean": vlad.mean, "projection": vlad.projection}, str(tmp_path / VLAD_FILE))
    old = load_vlad(tmp_path)
    assert old is not None and not old.colour
    coloured = Vlad(vlad.words, vlad.mean, vlad.projection, colour=True)
    assert len(coloured.stages(x, ["trunk"])) == 2 and coloured.stages(x, ["trunk"])[0].shape == (2, 3, 4, 4)


def test_a_model_trained_with_vlad_pooling_embeds_with_it(tmp_path: Path, torch_one_thread) -> None:
    from conftest import TINY_CONFIG, fill_folder

    from encoder import Encoder, ModelConfig, TrainConfig, train
    from encoder.checkpoint import model_id

    folder = fill_folder(tmp_path / "images", 4)
    cfg = TrainConfig(epochs=1, batch_size=4, pooling="vlad")
    train(folder, tmp_path / "m", ModelConfig(**TINY_CONFIG), cfg, progress=False)
    assert (tmp_path / "m" / VLAD_FILE).exists()
    enc = Encoder(tmp_path / "m", device="cpu")
    assert enc.vlad is not None and enc.dim == 24  # the mean pooling's dimension: 8 + 16 channels
    assert enc.vlad.colour and [w.shape[1] for w in enc.vlad.words] == [3, 8, 16]  # colours, then the stages
    paths = sorted(folder.rglob("*.png"))
    vecs = enc.embed(paths)
    assert vecs.shape == (12, 24) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    # the calibration was fitted on the VLAD vectors: the training images' mean is about 0
    assert np.linalg.norm(vecs.mean(0)) < 0.5
    assert np.allclose(enc.embed(paths[:1]), vecs[:1], atol=1e-5)  # a query embeds as indexing did
    # the same weights without the pooling file are another model with another vector
    vlad_id = model_id(tmp_path / "m")
    (tmp_path / "m" / VLAD_FILE).unlink()
    assert model_id(tmp_path / "m") != vlad_id
    assert Encoder(tmp_path / "m", device="cpu").vlad is None
    # training again with the mean pooling removes a stale pooling file
    save_vlad(fit_vlad(_maps_source(10), 10, dim=4, words=2), tmp_path / "m")
    cfg = TrainConfig(epochs=1, batch_size=4, pooling="mean")
    train(folder, tmp_path / "m", ModelConfig(**TINY_CONFIG), cfg, progress=False)
    assert not (tmp_path / "m" / VLAD_FILE).exists()


def test_vlad_pooling_is_refused_for_a_model_without_a_conv_trunk(tmp_path: Path) -> None:
    from conftest import fill_folder

    from encoder import ModelConfig, TrainConfig, train
    from encoder.errors import ConfigError

    folder = fill_folder(tmp_path / "images", 1)
    with pytest.raises(ConfigError, match="pooling"):
        train(folder, tmp_path / "m", ModelConfig(), TrainConfig(epochs=1, pooling="max"), progress=False)
    with pytest.raises(ConfigError, match="trunk"):
        train(
            folder,
            tmp_path / "m",
            ModelConfig(kind="dense", image_size=32, latent_dim=8),
            TrainConfig(epochs=1, pooling="vlad", init_from=None),
            progress=False,
        )


def test_the_default_pooling_is_vlad_where_the_model_has_maps_and_the_mean_where_not(tmp_path: Path) -> None:
    from conftest import TINY_CONFIG, fill_folder

    from encoder import ModelConfig, TrainConfig, create_model, train
    from encoder.search_vector import resolve_pooling

    assert TrainConfig().pooling == "auto"
    conv = create_model(ModelConfig(**TINY_CONFIG))
    dense = create_model(ModelConfig(kind="dense", image_size=32, latent_dim=8))
    assert resolve_pooling("auto", conv) == "vlad" and resolve_pooling("mean", conv) == "mean"
    assert resolve_pooling("auto", dense) == "mean"
    folder = fill_folder(tmp_path / "images", 1)
    cfg = TrainConfig(epochs=1, batch_size=4, init_from=None)
    train(folder, tmp_path / "dense", ModelConfig(kind="dense", image_size=32, latent_dim=8), cfg, progress=False)
    assert not (tmp_path / "dense" / VLAD_FILE).exists()  # trained with the default: the mean pooling
    train(folder, tmp_path / "conv", ModelConfig(**TINY_CONFIG), cfg, progress=False)
    assert (tmp_path / "conv" / VLAD_FILE).exists()


def test_refit_gives_a_trained_model_the_other_pooling_without_touching_its_weights(
    tmp_path: Path, torch_one_thread
) -> None:
    from conftest import TINY_CONFIG, fill_folder

    from encoder import Encoder, ModelConfig, TrainConfig, train
    from encoder.decoding import decode_to_array
    from encoder.search_vector import refit_search_vector

    folder = fill_folder(tmp_path / "images", 3)
    cfg = TrainConfig(epochs=1, batch_size=4, pooling="mean")
    train(folder, tmp_path / "m", ModelConfig(**TINY_CONFIG), cfg, progress=False)
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    paths = sorted(folder.rglob("*.png"))
    before = Encoder(tmp_path / "m", device="cpu").embed(paths)
    pixels, _, failed = decode_to_array(paths, 32)
    assert not failed
    refit_search_vector(tmp_path / "m", pixels, pooling="vlad", device="cpu")
    enc = Encoder(tmp_path / "m", device="cpu")
    assert enc.vlad is not None and (tmp_path / "m" / "model.safetensors").read_bytes() == weights
    vlad_vecs = enc.embed(paths)
    assert vlad_vecs.shape == before.shape and not np.allclose(vlad_vecs, before, atol=1e-2)
    refit_search_vector(tmp_path / "m", pixels, pooling="mean", device="cpu")
    assert not (tmp_path / "m" / VLAD_FILE).exists()
    assert np.allclose(Encoder(tmp_path / "m", device="cpu").embed(paths), before, atol=1e-5)  # as trained
