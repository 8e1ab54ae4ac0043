"""lookalike.encoder: images -> pixels -> a learned autoencoder -> search vectors.

Imports only torch, torchvision, pillow and numpy (and safetensors for weights).

Names are loaded lazily (PEP 562): decoding worker processes import
``encoder.decoding`` and must not pay for importing torch (seconds and
hundreds of MiB each) just because this package is their parent.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, ConfigError, ImageLoadError, LoadFailure, LookalikeError, TrainError

_LAZY = {
    "DEFAULT_MAX_PIXELS": "images",
    "ImageInfo": "images",
    "ImageSource": "images",
    "find_images": "image_files",
    "load_image": "images",
    "open_image": "images",
    "load_model": "checkpoint",
    "model_id": "checkpoint",
    "save_model": "checkpoint",
    "Encoder": "inference",
    "Autoencoder": "model",
    "ModelConfig": "config",
    "create_model": "registry",
    "list_models": "registry",
    "register": "registry",
    "TrainConfig": "train_config",
    "TrainResult": "train_config",
    "train": "training",
}

#: Importing these registers their model kinds; the registry's names are handed out after them.
_MODEL_MODULES = ("model", "variants")

__all__ = ["CheckpointError", "ConfigError", "ImageLoadError", "LoadFailure", "LookalikeError", "TrainError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'encoder' has no attribute {name!r}")
    if module == "registry":
        for model_module in _MODEL_MODULES:
            importlib.import_module(f".{model_module}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
