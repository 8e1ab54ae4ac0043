"""The hyperparameters of a model: one dataclass, saved beside the weights as JSON.

Its own module, free of torch, so the registry (``registry.py``) and the model files
(``model.py``, ``variants.py``) can all import it without importing one another.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass
class ModelConfig:
    """All hyperparameters of a model. Saved beside the weights as JSON."""

    kind: str = "conv"
    image_size: int = 64
    in_channels: int = 3
    #: Feature channels of each encoder stage; each stage halves the resolution.
    channels: tuple[int, ...] = (16, 32, 64, 128)
    latent_dim: int = 128
    downsample: str = "stride"  # "stride" (3x3 conv, stride 2) or "pool" (2x2 max-pool)
    upsample: str = "transpose"  # "transpose" (4x4 transposed conv) or "bilinear" (+ 3x3 conv)
    #: The search vector of the conv-trunk kinds (conv, denoising, sparse, contractive):
    #: "multiscale": each encoder stage's feature map average-pooled, L2-normalised, concatenated
    #: (D = sum(channels)); "latent": the bottleneck code the decoder reads (D = latent_dim);
    #: "hybrid": both. Multiscale is the default because it retrieves best by label on both
    #: evaluation corpora (docs/benchmarks.md, issue 6); the bottleneck code is PCA-level.
    embedding: str = "multiscale"
    # denoising
    noise: str = "gaussian"  # "gaussian" or "mask"
    noise_std: float = 0.1
    mask_prob: float = 0.25
    # sparse
    sparsity: str = "l1"  # "l1" or "kl"
    sparsity_weight: float = 1e-3
    sparsity_target: float = 0.05
    # contractive
    contractive_weight: float = 1e-4
    # variational (vae, cvae): ELBO = reconstruction + beta * KL
    beta: float = 1.0
    # vqvae
    codebook_size: int = 256
    code_dim: int = 32
    commitment: float = 0.25
    ema_decay: float = 0.99
    # conditional
    labels: tuple[str, ...] = ()
    # dense
    hidden: tuple[int, ...] = (512,)
    tied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        # Saved before `embedding` existed: those models searched by the latent, and their
        # indexes hold latent vectors, so they must keep doing so.
        values.setdefault("embedding", "latent")
        return cls(**values)

    def validate(self) -> None:
        stages = len(self.channels)
        if stages < 1:
            raise ConfigError("channels needs at least one stage")
        if self.image_size % (2**stages) != 0:
            raise ConfigError(f"image_size {self.image_size} must be divisible by 2**{stages} = {2**stages}")
        if self.latent_dim < 1:
            raise ConfigError("latent_dim must be positive")
        if self.downsample not in ("stride", "pool"):
            raise ConfigError(f"downsample must be 'stride' or 'pool', not {self.downsample!r}")
        if self.upsample not in ("transpose", "bilinear"):
            raise ConfigError(f"upsample must be 'transpose' or 'bilinear', not {self.upsample!r}")
        if self.embedding not in ("multiscale", "latent", "hybrid"):
            raise ConfigError(f"embedding must be 'multiscale', 'latent' or 'hybrid', not {self.embedding!r}")
