"""The autoencoders: the shared blocks, the base class and the plain convolutional model.

Every model maps a (B, 3, S, S) float image in [0, 1] to a (B, D) search
vector with :meth:`Autoencoder.encode`, and back with
:meth:`Autoencoder.decode`. :meth:`Autoencoder.training_loss` is the whole
objective for one batch, so the training loop knows nothing about variants.
The hyperparameters are :class:`~encoder.config.ModelConfig`; models are made by
name through :mod:`encoder.registry`, which this module and ``variants.py`` fill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .registry import register

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


def up_stages(cfg: ModelConfig) -> nn.Sequential:
    """The decoder's stages, the encoder's mirrored: (B, channels[-1], s, s) -> (B, channels[0], S, S)."""
    rev = tuple(reversed(cfg.channels))
    outs = (*rev[1:], rev[-1])
    return nn.Sequential(*[up_stage(a, b, cfg.upsample) for a, b in zip(rev, outs, strict=True)])


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

    def maps(self, x: Tensor) -> list[Tensor]:
        """(B, 3, S, S) -> every stage's (B, C_i, S / 2^(i+1), S / 2^(i+1)) output, in order."""
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

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
        self.stages = up_stages(cfg)
        self.out = nn.Conv2d(cfg.channels[0], cfg.in_channels, 3, padding=1)

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


@register("conv")
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


__all__ = ["Autoencoder", "ConvAutoencoder", "ModelConfig"]
