"""The search vector's fitted parts, fitted once a model is trained: its pooling and its calibration.

Both are statistics of the training images, stored beside the weights (safetensors), and applied
to every vector the :class:`~encoder.inference.Encoder` makes, queries included:

- the pooling (``"vlad"``, the default for a model with a convolutional trunk: VLAD over words
  fitted on the images, encoder/vlad.py; ``"mean"``: the model's own vector);
- then the calibration of those vectors (``"centre"``, ``"whiten"`` or ``"none"``,
  encoder/calibration.py).

:func:`refit_search_vector` fits them again on another set of images without retraining, so a
trained model can be given the other pooling (the benchmarks compare the two on the same weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .calibration import CALIBRATION, fit_calibration, save_calibration
from .device import conv_layout
from .errors import ConfigError
from .model import Autoencoder, ConvTrunk
from .vlad import VLAD_FILE, Vlad, fit_vlad, save_vlad, stage_maps

#: How the search vector is pooled from the trunk (``TrainConfig.pooling``): "vlad",
#: encoder/vlad.py, with its colour stage mAP@10 +0.03 to +0.21 over the mean pooling on every
#: labelled corpus measured (docs/benchmarks.md, "VLAD over the trunk's local features" and "A
#: colour stage in the VLAD"), at about half its embedding rate;
#: "mean", the model's own vector (every stage averaged); "auto", the default: "vlad" for a model
#: with a convolutional trunk, else "mean" (the dense autoencoder has no maps to pool). The
#: near-duplicate report compares the model's own vectors either way (``Encoder.copy_vectors``).
POOLINGS = ("auto", "mean", "vlad")


def resolve_pooling(pooling: str, model: Autoencoder) -> str:
    """The pooling `model` gets for `pooling` ("mean" or "vlad"); ConfigError if it cannot have it."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}: {', '.join(POOLINGS)}")
    has_maps = isinstance(getattr(model, "trunk", None), ConvTrunk)
    if pooling == "auto":
        return "vlad" if has_maps else "mean"
    if pooling == "vlad" and not has_maps:
        raise ConfigError(
            f"pooling 'vlad' pools a convolutional trunk's maps; model kind {model.config.kind!r} has none"
        )
    return pooling


def encode(model: Autoencoder, vlad: Vlad | None, x: Tensor) -> Tensor:
    """(B, 3, S, S) images in [0, 1] -> (B, D) float32 search vectors before normalisation and
    calibration: the model's own vector, or the VLAD of its trunk's maps."""
    if vlad is None:
        return model.encode(x).float()
    return vlad([m.float() for m in vlad.stages(x, model.trunk.maps(x))])


def fit_search_vector(
    model: Autoencoder,
    cache: torch.Tensor,
    device: torch.device,
    out: Path,
    *,
    calibration: str = "centre",
    pooling: str = "auto",
) -> None:
    """Fit the pooling and the calibration on `cache` ((N, 3, S, S) uint8 images, as the encoder
    embeds them) and save them in `out`, beside the weights; remove stale ones."""
    pooling = resolve_pooling(pooling, model)
    (Path(out) / CALIBRATION).unlink(missing_ok=True)
    (Path(out) / VLAD_FILE).unlink(missing_ok=True)
    vlad = None
    layout = conv_layout(device)  # the trunk's forward pass 1.8x faster on a CPU than on plain NCHW
    if pooling == "vlad":
        trunk, colour = model.trunk, True  # every new pooling has the colour stage

        def maps_of(idx: np.ndarray) -> list[torch.Tensor]:
            with torch.no_grad():
                x = cache[torch.from_numpy(idx)].to(device).float().div(255.0).contiguous(memory_format=layout)
                return [m.float().cpu() for m in stage_maps(x, trunk.maps(x), colour)]

        vlad = fit_vlad(maps_of, len(cache), model.embedding_dim, colour=colour)
        save_vlad(vlad, out)
        vlad = vlad.to(device)
    if calibration == "none":
        return
    parts = []
    with torch.no_grad():
        for s in range(0, len(cache), 256):
            x = cache[s : s + 256].to(device).float().div(255.0).contiguous(memory_format=layout)
            parts.append(F.normalize(encode(model, vlad, x), dim=1).cpu())
    fitted = fit_calibration(torch.cat(parts).numpy(), calibration)
    if fitted is not None:
        save_calibration(fitted, out)


def refit_search_vector(
    model_dir: str | os.PathLike,
    pixels: np.ndarray,
    *,
    pooling: str = "auto",
    calibration: str = "centre",
    device: str | None = None,
) -> None:
    """Fit a saved model's pooling and calibration again, on (N, S, S, 3) uint8 `pixels` (decoded
    as the encoder decodes: :func:`encoder.decoding.decode_to_array`); the weights are unchanged."""
    from .checkpoint import load_model
    from .device import pick_device

    dev = pick_device(device)
    model = load_model(Path(model_dir), dev)
    cache = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    fit_search_vector(model, cache, dev, Path(model_dir), calibration=calibration, pooling=pooling)
