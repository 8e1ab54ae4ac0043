"""The base model shipped inside the package, and where a training run starts from.

The base model was pretrained by the project on licence-clean artwork (bench/pretrain_corpus.py,
bench/pretrain_base.py) and is fine-tuned on each user's folder. Nothing is downloaded: the weights
are package data (``encoder/base_model/``: safetensors and a JSON config, like every lookalike
model, plus ``PROVENANCE.md``, which names every package the pretraining images came from, its
version and its licence).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .checkpoint import WEIGHTS, load_model, read_config
from .config import ModelConfig
from .errors import ConfigError
from .model import Autoencoder

BASE_MODEL_DIR = Path(__file__).resolve().parent / "base_model"


def base_model_dir() -> Path:
    """The shipped base model's directory (a ConfigError when this installation has none)."""
    if not (BASE_MODEL_DIR / WEIGHTS).exists():
        raise ConfigError(f"{BASE_MODEL_DIR}: this installation ships no base model")
    return BASE_MODEL_DIR


def resolve_init(init_from: str | None, model_config: ModelConfig | None = None) -> Path | None:
    """The model directory `init_from` names ("base": the shipped base model; "auto": that one
    when it ships and `model_config` is None or the base model's own), or None ("none", or empty:
    random weights)."""
    if not init_from or init_from == "none":
        return None
    if init_from == "auto":
        if not (BASE_MODEL_DIR / WEIGHTS).exists():
            return None
        fits = model_config is None or model_config == read_config(BASE_MODEL_DIR)[0]
        return BASE_MODEL_DIR if fits else None
    if init_from == "base":
        return base_model_dir()
    path = Path(init_from)
    if not (path / WEIGHTS).exists():
        raise ConfigError(f"init_from {init_from!r}: not a model directory (no {WEIGHTS})")
    return path


def start_config(given: ModelConfig | None, start_from: Path | None) -> ModelConfig:
    """The configuration of the model to train: the starting model's (a different `given` one is
    refused), or `given` (the default) when starting from random weights."""
    if start_from is None:
        return given or ModelConfig()
    start_cfg, _ = read_config(start_from)
    if given is not None and given != start_cfg:
        raise ConfigError(
            f"init_from {start_from}: that model is {start_cfg.to_dict()}, not the {given.to_dict()} asked for"
        )
    return start_cfg


def load_start_weights(model: Autoencoder, start_from: Path) -> None:
    """Copy the starting model's weights (BatchNorm statistics included) into `model`."""
    model.load_state_dict(load_model(start_from).state_dict(), strict=True)


def start_record(start_from: Path | None) -> dict[str, str] | None:
    """What a trained model's metadata says it started from (None: random weights): "base" or the
    directory, and the starting weights' SHA-256, since "auto" and "base" name whichever base
    model was installed at the time (one was once trained further from the base before it while
    its description said "from random weights")."""
    if start_from is None:
        return None
    where = "base" if start_from.resolve() == BASE_MODEL_DIR else str(start_from.resolve())
    return {"model": where, "weights_sha256": hashlib.sha256((start_from / WEIGHTS).read_bytes()).hexdigest()}
