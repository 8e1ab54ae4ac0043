"""The base model shipped inside the package: pretrained by the project on licence-clean artwork
(bench/pretrain_corpus.py, bench/pretrain_base.py), fine-tuned on each user's folder.

Nothing is downloaded: the weights are package data (``encoder/base_model/``: safetensors and a
JSON config, like every lookalike model, plus ``PROVENANCE.md``, which names every package the
pretraining images came from, its version and its licence).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

BASE_MODEL_DIR = Path(__file__).resolve().parent / "base_model"


def base_model_dir() -> Path:
    """The shipped base model's directory (a ConfigError when this installation has none)."""
    if not (BASE_MODEL_DIR / "model.safetensors").exists():
        raise ConfigError(f"{BASE_MODEL_DIR}: this installation ships no base model")
    return BASE_MODEL_DIR
