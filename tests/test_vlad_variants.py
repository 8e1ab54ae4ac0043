"""bench/vlad_variants.py's arms differ from the product's pooling only where they say they do.

The docs' table of variants reads each arm against the product's VLAD; that comparison means
something only if the script's aggregation with no change *is* the product's, and a rotation
changes nothing but the basis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bench_module

from encoder.vlad import aggregate, local_descriptors


@pytest.fixture(scope="module")
def vv():
    yield from bench_module("vlad_variants")


def _desc_and_words(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    desc = local_descriptors(torch.from_numpy(rng.random((3, 6, 8, 8), dtype=np.float32)))
    return desc, desc.reshape(-1, 6)[rng.choice(192, 9, replace=False)].clone()


def test_the_plain_arm_is_the_product_pooling(vv) -> None:
    desc, words = _desc_and_words()
    assert torch.allclose(vv.aggregate(desc, words, rn=False, rot=None), aggregate(desc, words), atol=1e-6)


def test_rotations_are_orthonormal_and_change_the_vector(vv) -> None:
    desc, words = _desc_and_words(1)
    rots = vv.fit_rotations(desc.reshape(-1, 6), words, rn=True)
    eye = torch.eye(6).expand(9, 6, 6)
    assert torch.allclose(rots.transpose(1, 2) @ rots, eye, atol=1e-5)
    identity = vv.aggregate(desc, words, rn=False, rot=eye.clone())
    assert torch.allclose(identity, aggregate(desc, words), atol=1e-6)
    rotated = vv.aggregate(desc, words, rn=False, rot=rots)
    # a rotation keeps each word's block length before the square root, not the vector itself
    assert not torch.allclose(rotated, identity, atol=1e-3)


def test_residual_normalisation_weighs_every_descriptor_alike(vv) -> None:
    """With rn, a word's block is the sum of unit residuals: scaling one residual changes nothing."""
    desc, words = _desc_and_words(2)
    near = vv.assign(desc, words)
    moved = desc.clone()
    i = 5
    j = int(near[0, i])
    moved[0, i] = words[j] + 0.5 * (desc[0, i] - words[j])  # the same direction, half as far
    assert int(vv.assign(moved, words)[0, i]) == j
    a = vv.aggregate(desc, words, rn=True, rot=None)[0]
    b = vv.aggregate(moved, words, rn=True, rot=None)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(aggregate(desc, words)[0], aggregate(moved, words)[0], atol=1e-4)
