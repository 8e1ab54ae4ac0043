"""Checkpoints: safetensors weights plus a JSON config. Loading never unpickles.

A model directory holds:
- ``model.safetensors``: the weights (and BatchNorm running statistics);
- ``config.json``: ``{"model": ModelConfig fields, "meta": {...}}``.
Everything needed to rebuild the model is in those two files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import variants  # noqa: F401  (importing it registers every model kind)
from .atomic import atomic_write_json, atomic_write_via
from .calibration import CALIBRATION
from .config import ModelConfig
from .errors import CheckpointError
from .model import Autoencoder
from .registry import create_model
from .vlad import VLAD_FILE

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _state_for_saving(model: Autoencoder) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights): save each tensor's own copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: Autoencoder, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Save weights then config, each atomically. Returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = _state_for_saving(model)
    atomic_write_via(out / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "lookalike"}))
    atomic_write_json(out / CONFIG, {"model": model.config.to_dict(), "meta": meta or {}})
    return out


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data["model"]), dict(data.get("meta", {}))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: no {CONFIG}; is this a lookalike model directory?") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from None


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild a model from its directory, in eval mode, on `device`."""
    cfg, _ = read_config(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{directory}: no {WEIGHTS}")
    model = create_model(cfg)
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises its own types; any failure is a bad checkpoint
        raise CheckpointError(f"{weights}: weights do not match the config ({exc})") from None
    return model.to(device).eval()


def model_id(directory: str | os.PathLike) -> str:
    """A short stable identity for a saved model: hash of its weights, config and the
    calibration and VLAD pooling of its search vectors (when it has them: they change every vector)."""
    h = hashlib.sha256()
    d = Path(directory)
    cfg, _ = read_config(d)
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name in (WEIGHTS, CALIBRATION, VLAD_FILE):
        if name != WEIGHTS and not (d / name).exists():
            continue  # models from before calibrations keep their identity
        with open(d / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
