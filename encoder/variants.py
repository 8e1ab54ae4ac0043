"""The autoencoder family beyond the plain convolutional one; each registers itself by name.

Every variant keeps the base contract: ``encode(x)`` (B, 3, S, S) -> (B, D) search
vector, ``decode(z)``, ``reconstruct(x, labels)`` and ``training_loss(x, target, labels)``
-> (loss, parts, reconstruction). Loss parts other than ``mse`` land in train_log.json.

- ``dense``: fully connected, undercomplete; ``tied`` decodes with the encoder's transposed weights.
- ``denoising``: the conv model, fed a corrupted input (Gaussian or masking noise) in training.
- ``sparse``: L1 on ReLU codes, or KL(rho || rho_hat_j) on sigmoid codes; overcomplete allowed.
- ``contractive``: + lambda * ||J||_F^2 of the sigmoid code w.r.t. the *pixels*, estimated with a
  random vector-Jacobian product (one Hutchinson sample per batch, unbiased).
- ``vae`` / beta-VAE: mean and log-variance, reparameterisation; the mean is the search vector.
- ``vqvae``: a grid of codebook indices, straight-through gradients, commitment loss, EMA codebook.
- ``cvae``: a VAE conditioned on the folder label, with a learned "unknown label" for search.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .errors import ConfigError
from .model import Autoencoder, ConvAutoencoder, ConvHead, ConvTrunk, up_stages
from .registry import register

# ---------------------------------------------------------------- dense


@register("dense")
class DenseAutoencoder(Autoencoder):
    """Pixels -> hidden ReLU layers -> linear latent, mirrored back; `tied` reuses W^T in the decoder."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        sizes = [cfg.in_channels * cfg.image_size**2, *cfg.hidden, cfg.latent_dim]
        self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        if cfg.tied:
            # Decoder layer i is encoder layer i transposed, with its own bias.
            self.decoder_biases = nn.ParameterList(nn.Parameter(torch.zeros(a)) for a in sizes[:-1])
        else:
            self.decoder_layers = nn.ModuleList(nn.Linear(b, a) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def encode(self, x: Tensor) -> Tensor:
        h = x.flatten(1)  # (B, 3*S*S)
        for i, layer in enumerate(self.encoder_layers):
            h = layer(h)
            if i < len(self.encoder_layers) - 1:
                h = F.relu(h)
        return h  # (B, latent_dim)

    def decode(self, z: Tensor) -> Tensor:
        h = z
        for i in reversed(range(len(self.encoder_layers))):
            if self.config.tied:
                h = F.linear(h, self.encoder_layers[i].weight.t(), self.decoder_biases[i])
            else:
                h = self.decoder_layers[i](h)
            if i > 0:
                h = F.relu(h)
        s, c = self.config.image_size, self.config.in_channels
        return torch.sigmoid(h).view(-1, c, s, s)


# ---------------------------------------------------------------- denoising


@register("denoising")
class DenoisingAutoencoder(ConvAutoencoder):
    """Learns to undo corruption: the encoder sees a noisy image, the loss compares to the clean one."""

    def corrupt(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.noise == "gaussian":
            return (x + cfg.noise_std * torch.randn_like(x)).clamp(0, 1)
        if cfg.noise == "mask":
            # Masking noise: a random `mask_prob` of pixel positions (all channels) set to 0.
            keep = torch.rand_like(x[:, :1]) >= cfg.mask_prob
            return x * keep
        raise ConfigError(f"noise must be 'gaussian' or 'mask', not {cfg.noise!r}")

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        inp = self.corrupt(x) if self.training else x
        return super().training_loss(inp, x if target is None else target, labels)  # target: the clean image


# ---------------------------------------------------------------- sparse


def kl_sparsity(h: Tensor, rho: float) -> Tensor:
    """sum_j KL(rho || rho_hat_j), rho_hat_j the batch-mean activation of unit j, h in (0, 1)."""
    rho_hat = h.float().mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (D,)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


@register("sparse")
class SparseAutoencoder(ConvAutoencoder):
    """Codes pushed towards sparsity: L1 on ReLU codes, or the KL penalty on sigmoid codes."""

    def latent(self, x: Tensor) -> Tensor:
        a = self.to_latent(self.trunk(x))
        if self.config.sparsity == "kl":
            return torch.sigmoid(a)
        if self.config.sparsity == "l1":
            return F.relu(a)
        raise ConfigError(f"sparsity must be 'l1' or 'kl', not {self.config.sparsity!r}")

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        target = x if target is None else target
        h = self.latent(x)  # (B, latent_dim)
        recon = self.decode(h)
        mse = F.mse_loss(recon.float(), target.float())
        if self.config.sparsity == "kl":
            penalty = kl_sparsity(h, self.config.sparsity_target)
        else:
            penalty = h.float().abs().sum(dim=1).mean()
        loss = mse + self.config.sparsity_weight * penalty
        active = float((h.detach() > (0.5 if self.config.sparsity == "kl" else 0.0)).float().mean())
        return loss, {"mse": float(mse.detach()), "sparsity": float(penalty.detach()), "active": active}, recon


# ---------------------------------------------------------------- contractive


@register("contractive")
class ContractiveAutoencoder(ConvAutoencoder):
    """Penalises how fast the sigmoid code changes with the pixels: lambda * ||dh/dx||_F^2.

    The conv trunk has no closed form, so the penalty is the Hutchinson estimate
    ||J||_F^2 = E_v ||v^T J||^2 with v ~ N(0, I) over the code: one vector-Jacobian product
    (a double backward) per batch, unbiased, and over the whole encoder rather than one layer.
    """

    def latent(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.to_latent(self.trunk(x)))

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        target = x if target is None else target
        if not torch.is_grad_enabled():  # validation: no graph to differentiate
            return super().training_loss(x, target, labels)
        x = x.detach().requires_grad_(True)
        h = self.latent(x)
        recon = self.decode(h)
        mse = F.mse_loss(recon.float(), target.float())
        v = torch.randn_like(h)
        (vjp,) = torch.autograd.grad(h, x, grad_outputs=v, create_graph=True)  # (B, 3, S, S)
        jacobian_sq = vjp.float().pow(2).sum(dim=(1, 2, 3)).mean()
        loss = mse + self.config.contractive_weight * jacobian_sq
        return loss, {"mse": float(mse.detach()), "jacobian_frobenius_sq": float(jacobian_sq.detach())}, recon


# ---------------------------------------------------------------- variational


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample: -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


@register("vae")
class VariationalAutoencoder(Autoencoder):
    """ELBO = reconstruction + beta * KL to N(0, I); `beta` != 1 is the beta-VAE.

    Reconstruction is the per-pixel MSE and the KL is divided by the pixel count, i.e. the
    ELBO of a Gaussian decoder divided by the number of pixels (so losses of all variants
    are on one scale). The search vector is the mean.
    """

    label_width = 0  # extra inputs to the posterior and decoder (the conditional VAE's label)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.trunk = ConvTrunk(cfg)
        self.to_stats = nn.Linear(self.trunk.out_features + self.label_width, 2 * cfg.latent_dim)
        self.head = ConvHead(cfg, cfg.latent_dim + self.label_width)

    def condition(self, labels: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        """What the posterior and decoder see beside the image, resolved once a batch: none here."""
        return None

    def posterior(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._posterior(x, self.condition(labels, x.shape[0], x.device))

    def _posterior(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.to_stats(self._with_condition(self.trunk(x), cond)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self._decode(z, self.condition(labels, z.shape[0], z.device))

    def _decode(self, z: Tensor, cond: Tensor | None) -> Tensor:
        return self.head(self._with_condition(z, cond))

    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.decode(self.posterior(x, labels)[0], labels)

    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images decoded from z ~ N(0, I) (for `cvae`, of the given label ids)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        return self.decode(z, labels)

    def _with_condition(self, h: Tensor, cond: Tensor | None) -> Tensor:
        return h

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        target = x if target is None else target
        cond = self.condition(labels, x.shape[0], x.device)  # one draw a batch, shared by posterior and decoder
        mu, logvar = self._posterior(x, cond)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = self._decode(z, cond)
        mse = F.mse_loss(recon.float(), target.float())
        kl = gaussian_kl(mu.float(), logvar.float()).mean()
        loss = mse + self.config.beta * kl / target[0].numel()
        return loss, {"mse": float(mse.detach()), "kl": float(kl.detach())}, recon


@register("cvae")
class ConditionalVAE(VariationalAutoencoder):
    """A VAE whose posterior and decoder also see the image's label (its folder).

    Labels are ``config.labels`` (the trainer fills them in); one more learned embedding
    stands for "unknown label". Training swaps a label for it 20% of the time, so a
    search query, which has no label, encodes with a trained neutral condition.
    """

    label_width = 16
    label_dropout = 0.2

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.unknown = len(cfg.labels)
        self.label_embedding = nn.Embedding(self.unknown + 1, self.label_width)

    def label_ids(self, labels: Tensor | None, n: int, device: torch.device) -> Tensor:
        """Label ids for a batch: unknown where missing or out of range; dropped out in training."""
        if labels is None:
            return torch.full((n,), self.unknown, dtype=torch.long, device=device)
        ids = labels.to(device=device, dtype=torch.long)
        ids = torch.where((ids >= 0) & (ids < self.unknown), ids, torch.full_like(ids, self.unknown))
        if self.training and self.label_dropout > 0:
            drop = torch.rand(ids.shape, device=device) < self.label_dropout
            ids = torch.where(drop, torch.full_like(ids, self.unknown), ids)
        return ids

    def label_id(self, name: str) -> int:
        if name not in self.config.labels:
            known = ", ".join(repr(label) for label in self.config.labels)
            raise ConfigError(f"unknown label {name!r}; this model knows: {known}")
        return self.config.labels.index(name)

    def condition(self, labels: Tensor | None, n: int, device: torch.device) -> Tensor:
        return self.label_ids(labels, n, device)

    def _with_condition(self, h: Tensor, cond: Tensor | None) -> Tensor:
        assert cond is not None  # label ids, from condition()
        return torch.cat([h, self.label_embedding(cond).to(h.dtype)], dim=1)


# ---------------------------------------------------------------- vector-quantised


class EMACodebook(nn.Module):
    """K code vectors of size D, learned by exponential moving averages of their assigned inputs.

    The codebook and its running statistics are buffers, so they live in the state_dict
    (and the safetensors file) while the optimiser never touches them. A code unused for
    a long stretch is restarted on a random input vector of the batch.
    """

    def __init__(self, size: int, dim: int, decay: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        embed = torch.randn(size, dim) * 0.1
        self.register_buffer("embed", embed)  # (K, D)
        self.register_buffer("cluster_size", torch.zeros(size))  # (K,)
        self.register_buffer("embed_avg", embed.clone())  # (K, D)

    def nearest(self, flat: Tensor) -> Tensor:
        """(N, D) -> (N,) index of the nearest code."""
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(dim=1)

    @torch.no_grad()
    def update(self, flat: Tensor, idx: Tensor) -> None:
        onehot = F.one_hot(idx, self.embed.shape[0]).type(flat.dtype)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.embed.shape[0] * self.eps) * n
        self.embed.copy_(self.embed_avg / size[:, None])
        dead = self.cluster_size < 1e-2
        if dead.any():
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            self.embed[dead] = flat[pick]
            self.embed_avg[dead] = flat[pick]
            self.cluster_size[dead] = 1.0


@register("vqvae")
class VQVAE(Autoencoder):
    """Conv trunk -> a (code_dim, s, s) grid -> each cell snapped to the nearest of K codes -> decoder.

    The image's compressed form is the s*s grid of code indices (log2 K bits each).
    ``encode`` returns the *pre-quantisation* grid, flattened (B, code_dim*s*s): it is what
    the codes are chosen from, and keeps the fine distances that snapping to K codes
    would flatten into ties; ``decode`` quantises it, so decode(encode(x)) is the VQ-VAE's
    reconstruction.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.trunk = ConvTrunk(cfg)
        self.side = self.trunk.out_side
        c_last = cfg.channels[-1]
        self.pre_quant = nn.Conv2d(c_last, cfg.code_dim, 1)
        self.codebook = EMACodebook(cfg.codebook_size, cfg.code_dim, cfg.ema_decay)
        self.post_quant = nn.Sequential(
            nn.Conv2d(cfg.code_dim, c_last, 3, padding=1, bias=False), nn.BatchNorm2d(c_last), nn.ReLU(inplace=True)
        )
        self.up = up_stages(cfg)
        self.out = nn.Conv2d(cfg.channels[0], cfg.in_channels, 3, padding=1)

    @property
    def embedding_dim(self) -> int:
        return self.config.code_dim * self.side**2

    @property
    def code_bits(self) -> int:
        """Bits of one image's compressed form: s*s indices of ceil(log2 K) bits."""
        return self.side**2 * max(1, math.ceil(math.log2(self.config.codebook_size)))

    def _grid(self, x: Tensor) -> Tensor:
        return self.pre_quant(self.trunk.stages(x)).float()  # (B, code_dim, s, s)

    def _flat(self, grid: Tensor) -> Tensor:
        return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])  # (B*s*s, code_dim)

    def _quantised(self, idx: Tensor, b: int) -> Tensor:
        q = self.codebook.embed[idx].view(b, self.side, self.side, -1)
        return q.permute(0, 3, 1, 2).contiguous()  # (B, code_dim, s, s)

    def encode(self, x: Tensor) -> Tensor:
        return self._grid(x).flatten(1)

    def codes(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, s, s) int64 code indices: the compressed image."""
        grid = self._grid(x)
        return self.codebook.nearest(self._flat(grid)).view(-1, self.side, self.side)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """(B, s, s) code indices -> (B, 3, S, S) image."""
        return self._decoder(self._quantised(codes.flatten(), codes.shape[0]))

    def decode(self, z: Tensor) -> Tensor:
        grid = z.float().view(-1, self.config.code_dim, self.side, self.side)
        return self._decoder(self._quantised(self.codebook.nearest(self._flat(grid)), grid.shape[0]))

    def _decoder(self, q: Tensor) -> Tensor:
        return torch.sigmoid(self.out(self.up(self.post_quant(q))))

    def training_loss(
        self, x: Tensor, target: Tensor | None = None, labels: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float], Tensor]:
        target = x if target is None else target
        grid = self._grid(x)
        flat = self._flat(grid)
        idx = self.codebook.nearest(flat.detach())
        if self.training:
            self.codebook.update(flat.detach(), idx)
        q = self._quantised(idx, grid.shape[0])
        commit = F.mse_loss(grid, q.detach())
        straight_through = grid + (q - grid).detach()
        recon = self._decoder(straight_through)
        mse = F.mse_loss(recon.float(), target.float())
        loss = mse + self.config.commitment * commit
        usage = self._usage(idx)
        parts = {
            "mse": float(mse.detach()),
            "commitment": float(commit.detach()),
            "perplexity": usage["perplexity"],
            "codes_used": usage["codes_used"],
        }
        return loss, parts, recon

    @torch.no_grad()
    def codebook_usage(self, x: Tensor) -> dict[str, float]:
        """How much of the codebook a batch of images uses: share of codes used and perplexity."""
        return self._usage(self.codes(x).flatten())

    def _usage(self, idx: Tensor) -> dict[str, float]:
        counts = torch.bincount(idx, minlength=self.config.codebook_size).float()
        p = counts / counts.sum()
        return {
            "codes_used": float((counts > 0).float().mean()),
            "perplexity": float(torch.exp(-(p * torch.log(p + 1e-10)).sum())),
        }
