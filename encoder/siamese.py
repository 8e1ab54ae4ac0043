"""The siamese term (VICReg, Bardes, Ponce and LeCun 2022) trained next to reconstruction.

Two augmented views of each image are encoded; their search vectors are pulled together
(invariance: mean squared distance), while each dimension keeps a standard deviation of at
least 1 over the batch (variance: a hinge) and the dimensions stay uncorrelated
(covariance: the squared off-diagonal entries), which keeps the pull from collapsing every
vector onto one point. The seed article's conclusion suggests exactly this pairing of a
reconstruction objective with a siamese one; reconstruction keeps the model an autoencoder.

As in VICReg, the three terms act on a projector's output (an MLP over the search vector,
used in training only and not saved): applied to the search vector itself, the variance
hinge asked the pooled features for a standard deviation of 1 they never reach (0.1 on Tux
Paint: the hinge stayed at 0.90 and the term changed mAP@10 by +0.005 at weights 0.01 and 0.1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: VICReg's published weights of its three terms (invariance, variance, covariance).
INVARIANCE, VARIANCE, COVARIANCE = 25.0, 25.0, 1.0
#: The projector's width (VICReg uses 8192 on ImageNet; a 2-core budget wants less).
PROJECTOR = 512


class Projector(nn.Module):
    """Search vector -> the space the siamese term acts in (training only)."""

    def __init__(self, dim: int, width: int = PROJECTOR) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.float())


def vicreg_loss(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> tuple[Tensor, dict[str, float]]:
    """(loss, parts) for two (B, D) batches of embeddings of the same images' two views."""
    z1, z2 = z1.float(), z2.float()
    b, d = z1.shape
    invariance = torch.nn.functional.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + torch.relu(1.0 - std).mean() / 2
        cov = (z.T @ z) / max(1, b - 1)
        off = cov - torch.diag(torch.diagonal(cov))
        covariance = covariance + off.pow(2).sum() / d / 2
    loss = INVARIANCE * invariance + VARIANCE * variance + COVARIANCE * covariance
    parts = {
        "invariance": float(invariance.detach()),
        "variance": float(variance.detach()),
        "covariance": float(covariance.detach()),
    }
    return loss, parts
