"""Augmentations for training: what the encoder sees of an image, and what the decoder must give back.

"invariant" shows the encoder a randomly cropped, shifted, brighter or darker view while the
decoder must still produce the clean image, which teaches the code to ignore those changes.
"strong" (measured for pretraining, not a default: docs/benchmarks.md, stop 32) also crops
harder, jitters saturation and greys one view in five, as SimCLR's and VICReg's views do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

#: The augmentation modes (``TrainConfig.augment``).
AUGMENTS = ("none", "flip", "invariant", "strong")


def _random_affine(x: torch.Tensor, gen: torch.Generator, max_shift: float, min_scale: float) -> torch.Tensor:
    """Random zoom-in (crop) and shift per image, filling with white like the letterbox."""
    b = x.shape[0]
    scale = torch.empty(b, device=x.device).uniform_(min_scale, 1.0, generator=gen)
    shift = torch.empty(b, 2, device=x.device).uniform_(-max_shift, max_shift, generator=gen)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Sample 1 - x so that out-of-range samples (zeros) come back as white.
    return 1.0 - F.grid_sample(1.0 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (encoder input, decoder target) for a clean batch in [0, 1]."""
    if mode == "none":
        return x, x
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if mode == "flip":
        return x, x
    if mode not in ("invariant", "strong"):
        raise ConfigError(f"unknown augment mode {mode!r}")
    strong = mode == "strong"
    view = _random_affine(x, gen, max_shift=0.12 if strong else 0.08, min_scale=0.6 if strong else 0.85)
    b = x.shape[0]
    if strong:  # saturation jitter, and one view in five grey (SimCLR's colour distortions, no hue)
        grey = (view * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        sat = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.5, 1.5, generator=gen)
        sat = torch.where(torch.rand(b, 1, 1, 1, device=x.device, generator=gen) < 0.2, torch.zeros_like(sat), sat)
        view = (grey + (view - grey) * sat).clamp(0, 1)
    gain = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.75, 1.25, generator=gen)
    bias = torch.empty(b, 1, 1, 1, device=x.device).uniform_(-0.12, 0.12, generator=gen)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    view = ((view - mean) * gain + mean + bias).clamp(0, 1)
    return view, x
