"""The hashes' own nearest neighbours as near-duplicate candidates (search/reports/pairs.py
``hash_pairs``): found exactly, and by multi-index hashing above ``exact_max``."""

from __future__ import annotations

import numpy as np
import pytest

from search.reports.pairs import hash_pairs, union_pairs
from search.reports.scan import NO_HASH, hamming


def _planted(n: int = 3000, families: int = 200, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """`n` random 64-bit hashes; the first `families` each have a copy 0-3 bits away at the end
    (within 3 bits, multi-index hashing over four 16-bit quarters finds every pair)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64)
    copies = codes[:families].copy()
    for c in range(families):
        for bit in rng.choice(64, rng.integers(0, 4), replace=False):
            copies[c] ^= np.int64(1) << np.int64(bit)
    codes = np.concatenate([codes, copies])
    return codes, {(c, n + c) for c in range(families)}


@pytest.mark.parametrize("exact_max", [1_000_000, 500])  # exact popcount; multi-index hashing
def test_every_planted_copy_is_found_and_nothing_beyond_the_cap(exact_max: int) -> None:
    codes, planted = _planted()
    i, j = hash_pairs(codes, 6, k=4, exact_max=exact_max)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert planted <= found
    assert (i < j).all() and len(found) == len(i)  # each pair once, smaller position first
    assert (hamming(codes[i], codes[j]) <= 6).all()
    # random 64-bit hashes are ~32 bits apart: nothing but the copies is within 6
    assert found == planted


def test_a_missing_hash_is_no_ones_neighbour() -> None:
    codes, planted = _planted(n=500, families=20)
    codes[0] = NO_HASH  # the first family's original failed to decode
    i, j = hash_pairs(codes, 6, k=4, valid=codes != NO_HASH)
    found = set(zip(i.tolist(), j.tolist(), strict=True))
    assert found == planted - {(0, 500)}
    assert 0 not in set(i.tolist()) | set(j.tolist())


def test_union_adds_only_new_pairs_scored_by_their_vectors() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(6, 4)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    i, j, s = np.array([0, 1]), np.array([2, 3]), np.array([0.5, 0.25], np.float32)
    ui, uj, us = union_pairs(i, j, s, np.array([0, 4]), np.array([2, 5]), vecs)
    assert list(zip(ui.tolist(), uj.tolist(), strict=True)) == [(0, 2), (1, 3), (4, 5)]
    assert us[:2].tolist() == [0.5, 0.25]  # kept as given
    assert us[2] == pytest.approx(float(vecs[4] @ vecs[5]), abs=1e-6)
