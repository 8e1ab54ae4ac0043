"""The collection's own scale for a similarity: what share of its random pairs score lower.

A cosine of the calibrated search vectors reads about 0 for unrelated images in any collection,
but how high a *related* pair scores depends on the collection: a recompressed photograph scores
~1.0, an icon at half size ~0.7, a digit at half size ~0.2 (docs/benchmarks.md, "What a copy
scores"). A number that means the same everywhere is the similarity's rank among the
collection's own pairs: its percentile. 50 is a typical pair of the index in any folder; 99.9 is
closer than all but one pair in a thousand, whether the folder holds photographs or digits.

"The collection" is the index as published, not the images the model was fitted on: the
search vector's projection is fitted on (up to 2,048 of) those, and the vectors of images it was
fitted on spread differently from the vectors of images it was not (measured: pairs of images
outside the fit fall at the 0.4th / 45th / 98th percentile of the fitted images' pairs where
uniform would give 10 / 50 / 90; docs/benchmarks.md, "The score's second number"). Reading the
scale off the index itself makes a by-id answer's percentile exact whatever the folder's size.

Each generation of the index gets its scale when the engine opens it: the vectors of at most
``SAMPLE_IMAGES`` random images (one read), and ``MAX_PAIRS`` random pairs among them (all of them
when there are fewer), sorted. That puts a percentile within about +-0.2 at the median (one
standard error, 100 sqrt(p(1 - p)/n)) and resolves the top tail to 1 / ``MAX_PAIRS`` (0.0015%),
whatever the index's size: the sample's size, not the index's, sets both; it costs a few
milliseconds. A similarity above every sampled pair reads 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only: the CLI imports top_share and must not load faiss to start
    from indexer.exact import ExactVectors

#: Random pairs kept (256 KB as float32).
MAX_PAIRS = 65536
#: The pairs are drawn among at most this many images' vectors, read at once (4 MB at 240-d).
SAMPLE_IMAGES = 4096


@dataclass(frozen=True)
class PairScale:
    """A sorted sample of the cosines of random pairs of a collection's search vectors."""

    cosines: np.ndarray  # (n,) float32, ascending

    @property
    def pairs(self) -> int:
        return int(len(self.cosines))

    def similarity_at(self, percentile: float) -> float:
        """The similarity a pair needs to reach `percentile` (0-100): the scale read backwards."""
        return float(np.quantile(self.cosines, percentile / 100.0))

    def summary(self) -> dict[str, float | int]:
        """What similarity it takes to stand out in this collection: the median pair, and the top
        10%, 1% and 0.1% of pairs (for ``/stats``)."""
        at = {"median": 50.0, "top_10_percent": 90.0, "top_1_percent": 99.0, "top_0_1_percent": 99.9}
        return {"pairs": self.pairs, **{k: round(self.similarity_at(p), 4) for k, p in at.items()}}

    def percentile(self, similarities: np.ndarray | list[float]) -> np.ndarray:
        """The share of the sampled pairs that score strictly lower than each similarity, in
        percent: 0 below every pair, 100 above every pair. (N,) float64."""
        s = np.asarray(similarities, dtype=np.float32)
        return np.searchsorted(self.cosines, s, side="left") * (100.0 / len(self.cosines))


def fit_pair_scale(vectors: np.ndarray, *, seed: int = 0) -> PairScale | None:
    """The pair scale of (n, d) unit `vectors` (as search compares them); None for fewer than two."""
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 2:
        return None
    if n * (n - 1) // 2 <= MAX_PAIRS:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, MAX_PAIRS)
        j = (i + rng.integers(1, n, MAX_PAIRS)) % n  # uniform over the others: never the image itself
    cos = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), 8192):  # row-wise dot products, 8,192 pairs at a time
        cos[s : s + 8192] = np.einsum("nd,nd->n", x[i[s : s + 8192]], x[j[s : s + 8192]])
    return PairScale(np.sort(np.clip(cos, -1.0, 1.0)))


def sample_rows(n: int, *, seed: int = 0) -> np.ndarray:
    """Which of `n` stored vectors the scale is read from: all, or ``SAMPLE_IMAGES`` of them drawn
    with a fixed seed (the same generation always gets the same scale), ascending."""
    if n <= SAMPLE_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, SAMPLE_IMAGES, replace=False))


def index_pair_scale(vectors: ExactVectors, *, seed: int = 0) -> PairScale | None:
    """The pair scale of an index's stored vectors: pairs among those of :func:`sample_rows`."""
    ids = vectors.ids()
    return fit_pair_scale(vectors.get(ids[sample_rows(len(ids), seed=seed)]), seed=seed)


def top_share(percentile: float | None) -> str:
    """A hit's percentile as people read it: the share of the index's pairs of images that score
    at least as high, e.g. "top 0.3%"; "" when there is none. (The web page's ``topShare`` is the
    same rule.)"""
    if percentile is None:
        return ""
    share = max(0.0, 100.0 - percentile)
    if share < 0.01:
        return "top <0.01%"
    return f"top {share:.0f}%" if share >= 10 else f"top {share:.2g}%"
