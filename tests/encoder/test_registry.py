"""The registry: complete however it is reached (import cycles: tests/test_layering.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from encoder import create_model, list_models

REPO = Path(__file__).resolve().parents[2]
ENCODER = REPO / "encoder"
KINDS = list_models()  # through the package: every model file imported first


@pytest.mark.parametrize(
    "code",
    [
        "import encoder; print(','.join(encoder.list_models()))",
        "from encoder import create_model, list_models; create_model('vae'); print(','.join(list_models()))",
        "from encoder import ModelConfig, register; from encoder import list_models; print(','.join(list_models()))",
        "from encoder.checkpoint import load_model; from encoder.registry import list_models;"
        " print(','.join(list_models()))",
    ],
)
def test_every_kind_is_registered_however_the_registry_is_reached(code: str) -> None:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().split(",") == KINDS, out.stderr


def test_an_unknown_name_fails_with_every_known_name() -> None:
    assert {"conv", "dense", "vae", "cvae", "vqvae"} <= set(KINDS)
    with pytest.raises(ValueError, match="unknown model kind 'nope'; known: " + ", ".join(KINDS)):
        create_model("nope")
