"""How to train (:class:`TrainConfig`), what a training returns (:class:`TrainResult`), and the
step budget that keeps a first run's cost growing slowly with the folder (:func:`planned_steps`).

The training loop itself is :mod:`encoder.training`; these are apart so that a caller can build and
check a configuration without the loop's imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import DEFAULT_MAX_PIXELS


@dataclass
class TrainConfig:
    """How to train (the model's own hyperparameters live in ModelConfig)."""

    #: None: enough epochs for :func:`planned_steps` optimiser steps (at least 2, at most 300):
    #: `min_steps` up to 1,000 training images, then growing with the square root of the folder,
    #: so the cost of a first run grows slowly with the folder (docs/benchmarks.md, "Training budget").
    epochs: int | None = None
    min_steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    val_fraction: float = 0.1
    patience: int = 10  # epochs without validation improvement before stopping
    seed: int = 0
    device: str | None = None
    #: "none"; "flip" (random horizontal flips); "invariant": flips, and the encoder
    #: also sees a jittered view (crop/shift, brightness, contrast) while the decoder
    #: must still produce the un-jittered image, which teaches the latent to ignore them;
    #: "strong": harder crops, saturation jitter and greyscale too (a pretraining experiment).
    augment: str = "invariant"
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int | None = None
    #: How the search vectors are calibrated on the training images once training ends
    #: (encoder/calibration.py): "none", "centre" or "whiten". Centring makes the score mean
    #: the same in every collection (unrelated images at about 0) and kept retrieval as it was
    #: (tuxpaint mAP@10 0.315 -> 0.318); whitening cost it there (0.250; docs/benchmarks.md).
    calibration: str = "centre"
    #: How the trunk's feature maps become the search vector (encoder/search_vector.py): "vlad",
    #: VLAD over words fitted on the training images, projected to the same dimension
    #: (encoder/vlad.py; better retrieval on every corpus measured, half the embedding rate);
    #: "mean", the model's own vector (every stage average-pooled); "auto" (the default): "vlad"
    #: where the model has a convolutional trunk, else "mean". Fitted once training ends, before
    #: the calibration, which then calibrates the pooled vectors.
    pooling: str = "auto"
    #: Weight of the siamese term (encoder/siamese.py: VICReg on two augmented views' search
    #: vectors) next to reconstruction; 0 trains reconstruction alone. Needs an augmentation.
    siamese: float = 0.0
    #: Start from these weights instead of random ones: a model directory, or "base" for the
    #: base model shipped in the package (encoder/base.py); the model's configuration is then
    #: the starting model's, and a different `model_config` is refused. "auto": the base model
    #: when one ships and the model asked for is its configuration (the default one), else
    #: random weights. None: random weights. "auto" is the default: started from the base model,
    #: the default training scored above training from scratch on 4 of 6 corpora (docs/benchmarks.md,
    #: "The shipped base model").
    init_from: str | None = "auto"


@dataclass
class TrainResult:
    out: Path
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    images_per_second: float = 0.0


#: Up to this many training images the budget is `min_steps`; above, it grows as the square root.
BUDGET_IMAGES = 1000


def planned_steps(n_train: int, min_steps: int) -> int:
    """Optimiser steps for a folder of `n_train` training images: `min_steps`, times
    sqrt(n_train / BUDGET_IMAGES) above that size. A larger folder has more to learn, but each
    step also sees more variety; the square root keeps 10,000 images at 3.2x the steps of 1,000
    (not 10x), so a first run on a 2-core machine stays within minutes."""
    return math.ceil(min_steps * max(1.0, math.sqrt(n_train / BUDGET_IMAGES)))
