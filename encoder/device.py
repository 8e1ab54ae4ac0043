"""Choosing where the model runs."""

from __future__ import annotations

import torch

from .errors import ConfigError


def pick_device(preference: str | None = None) -> torch.device:
    """CUDA when available, else Apple MPS, else CPU; `preference` ("cpu", "cuda:1", ...) overrides."""
    if preference and preference != "auto":
        dev = torch.device(preference)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} asked for, but CUDA is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
