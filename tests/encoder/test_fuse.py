"""BatchNorm folding (encoder/fuse.py): the folded model answers what the unfolded one does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import encoder.fuse
from encoder import create_model, list_models
from encoder.fuse import fold_batchnorm

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = dict(image_size=32, channels=(8, 16), latent_dim=16, codebook_size=16, code_dim=8, labels=("a", "b"))
WITH_BATCHNORM = [
    k for k in list_models() if any(isinstance(m, nn.BatchNorm2d) for m in create_model(k, **TINY).modules())
]


def _model_with_learned_batchnorm(kind: str, **overrides: object) -> nn.Module:
    """A model in eval mode whose BatchNorms are far from identity maps, as after training."""
    torch.manual_seed(0)
    model = create_model(kind, **{**TINY, **overrides})
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.normal_(bn.bias, 0, 0.3)
    return model.eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode(x), model.reconstruct(x, None)


def test_the_default_model_and_others_have_batchnorm() -> None:
    assert "conv" in WITH_BATCHNORM and len(WITH_BATCHNORM) >= 2


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("kind", WITH_BATCHNORM)
def test_folding_keeps_the_outputs(kind: str, upsample: str) -> None:
    model = _model_with_learned_batchnorm(kind, upsample=upsample)
    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert n > 0 and n + left == bns
    if upsample == "transpose":
        assert left == 0  # every BatchNorm follows a conv or a transposed conv
    x = torch.rand(4, 3, 32, 32)
    for want, got in zip(_outputs(model, x), _outputs(folded, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_wrong_fold_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: dropping the BatchNorm instead of folding it changes the outputs."""
    model = _model_with_learned_batchnorm("conv")
    monkeypatch.setattr(encoder.fuse, "fuse_conv_bn_eval", lambda conv, bn, transpose=False: conv)
    wrong = copy.deepcopy(model)
    assert fold_batchnorm(wrong) > 0
    x = torch.rand(4, 3, 32, 32)
    for want, got in zip(_outputs(model, x), _outputs(wrong, x), strict=True):
        assert not torch.allclose(got, want, rtol=1e-4, atol=1e-5)
