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


#: Convolutions run on channels-last (NHWC) activations on CPUs and CUDA: oneDNN's CPU kernels
#: and cuDNN's tensor-core ones both want that layout. On the 2-core CPU, measured side by side
#: (bench/layout_speed.py; docs/benchmarks.md, "Channels-last on the CPU"): a training step
#: 1.3x, a first run's training 1.14x on data/. A module constant, so that the benchmark can
#: time the plain layout beside it.
CHANNELS_LAST = True


def conv_layout(device: torch.device) -> torch.memory_format:
    """The memory format for `device`'s image batches and conv weights (see ``CHANNELS_LAST``);
    the plain layout elsewhere (MPS: not measured)."""
    if CHANNELS_LAST and device.type in ("cpu", "cuda"):
        return torch.channels_last
    return torch.contiguous_format
