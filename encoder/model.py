"""The autoencoders: one config dataclass, the shared blocks, and a registry.

Every model maps a (B, 3, S, S) float image in [0, 1] to a (B, D) search
vector with :meth:`Autoencoder.encode`, and back with
:meth:`Autoencoder.decode`. :meth:`Autoencoder.training_loss` is the whole
objective for one batch, so the training loop knows nothing about variants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        # Saved before `embedding` existed: those models searched by the latent, and their
        # indexes hold latent vectors, so they must keep doing so.
        values.setdefault("embedding", "latent")
        return cls(**values)

    def validate(self) -> None:
        stages = len(self.channels)
        if stages < 1:
            raise ValueError("channels needs at least one stage")
        if self.image_size % (2**stages) != 0:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{stages} = {2**stages}")
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be positive")
        if self.downsample not in ("stride", "pool"):
            raise ValueError(f"downsample must be 'stride' or 'pool', not {self.downsample!r}")
        if self.upsample not in ("transpose", "bilinear"):
            raise ValueError(f"upsample must be 'transpose' or 'bilinear', not {self.upsample!r}")
        if self.embedding not in ("multiscale", "latent", "hybrid"):
            raise ValueError(f"embedding must be 'multiscale', 'latent' or 'hybrid', not {self.embedding!r}")


# ---------------------------------------------------------------- blocks


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def down_stage(cin: int, cout: int, mode: str) -> nn.Sequential:
    """One encoder stage: a conv at full resolution, then halve it."""
    if mode == "pool":
        return nn.Sequential(conv_block(cin, cout), conv_block(cout, cout), nn.MaxPool2d(2))
    return nn.Sequential(conv_block(cin, cout), conv_block(cout, cout, stride=2))


def up_stage(cin: int, cout: int, mode: str) -> nn.Sequential:
    """One decoder stage: double the resolution, then a conv."""
    if mode == "bilinear":
        up: nn.Module = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        )
    else:
        up = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
    return nn.Sequential(up, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), conv_block(cout, cout))


class ConvTrunk(nn.Module):
    """Convolutional encoder trunk: (B, 3, S, S) -> (B, C_last * s * s) features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        chans = (cfg.in_channels, *cfg.channels)
        pairs = zip(chans[:-1], chans[1:], strict=False)
        self.stages = nn.Sequential(*[down_stage(a, b, cfg.downsample) for a, b in pairs])
        self.out_side = cfg.image_size // 2 ** len(cfg.channels)
        self.out_features = cfg.channels[-1] * self.out_side**2

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x).flatten(1)

    def pooled(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, sum(channels)): every stage average-pooled and L2-normalised, concatenated."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(F.normalize(x.float().mean(dim=(2, 3)), dim=1))
        return torch.cat(out, dim=1)


class ConvHead(nn.Module):
    """Mirrored decoder: (B, D) -> (B, 3, S, S) in [0, 1]."""

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.side = cfg.image_size // 2 ** len(cfg.channels)
        self.c0 = cfg.channels[-1]
        self.fc = nn.Linear(in_dim, self.c0 * self.side**2)
        rev = tuple(reversed(cfg.channels))
        outs = (*rev[1:], rev[-1])
        self.stages = nn.Sequential(*[up_stage(a, b, cfg.upsample) for a, b in zip(rev, outs, strict=False)])
        self.out = nn.Conv2d(outs[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.fc(z)).view(-1, self.c0, self.side, self.side)
        return torch.sigmoid(self.out(self.stages(h)))


# ---------------------------------------------------------------- models


class Autoencoder(nn.Module):
    """Base class: subclasses set up `encode`/`decode` and may extend the loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg

    @property
    def embedding_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, D)
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:  # (B, D) -> (B, 3, S, S)
        raise NotImplementedError

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x))

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        """Loss for one batch; returns (loss, named parts, reconstruction).

        `x` is what the encoder sees, `target` what the decoder must produce
        (defaults to `x`; the trainer passes a cleaner target when it trains for
        invariance to augmentations).
        """
        target = x if target is None else target
        recon = self.reconstruct(x, labels)
        loss = F.mse_loss(recon.float(), target.float())
        return loss, {"mse": float(loss.detach())}, recon


class ConvAutoencoder(Autoencoder):
    """The convolutional autoencoder: conv trunk -> linear -> latent -> linear -> deconv.

    The decoder reads the latent; the search vector is the latent or the trunk's pooled
    multi-scale features (``ModelConfig.embedding``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.trunk = ConvTrunk(cfg)
        self.to_latent = nn.Linear(self.trunk.out_features, cfg.latent_dim)
        self.head = ConvHead(cfg, cfg.latent_dim)

    @property
    def embedding_dim(self) -> int:
        pooled = sum(self.config.channels)
        return {"multiscale": pooled, "hybrid": pooled + self.config.latent_dim}.get(
            self.config.embedding, self.config.latent_dim
        )

    def latent(self, x: Tensor) -> Tensor:  # (B, 3, S, S) -> (B, latent_dim), what the decoder reads
        return self.to_latent(self.trunk(x))

    def encode(self, x: Tensor) -> Tensor:
        if self.config.embedding == "multiscale":
            return self.trunk.pooled(x)
        if self.config.embedding == "hybrid":
            # What is in the picture (pooled features at every scale) and where (the latent),
            # each part unit length so neither drowns the other.
            return torch.cat([self.trunk.pooled(x), F.normalize(self.latent(x).float(), dim=1)], dim=1)
        return self.latent(x)

    def decode(self, z: Tensor) -> Tensor:  # (B, latent_dim) -> (B, 3, S, S)
        return self.head(z)

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.decode(self.latent(x))


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[[ModelConfig], Autoencoder]] = {}


def register(name: str) -> Callable[[type[Autoencoder]], type[Autoencoder]]:
    """Class decorator: make a variant constructible by name."""

    def wrap(cls: type[Autoencoder]) -> type[Autoencoder]:
        _REGISTRY[name] = cls
        return cls

    return wrap


register("conv")(ConvAutoencoder)


def list_models() -> list[str]:
    _load_variants()
    return sorted(_REGISTRY)


def create_model(name_or_config: str | ModelConfig, **overrides: Any) -> Autoencoder:
    """Build a model by registry name (with config overrides) or from a full config."""
    _load_variants()
    if isinstance(name_or_config, ModelConfig):
        cfg = dataclasses.replace(name_or_config, **overrides)
    else:
        cfg = ModelConfig(kind=name_or_config, **overrides)
    if cfg.kind not in _REGISTRY:
        raise ValueError(f"unknown model kind {cfg.kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.kind](cfg)


def _load_variants() -> None:
    # Variants register themselves on import; importing here keeps the registry complete
    # however the caller reached it, without a cycle at module load.
    from . import variants  # noqa: F401


__all__ = [
    "Autoencoder",
    "ConvAutoencoder",
    "ModelConfig",
    "create_model",
    "list_models",
    "register",
]
