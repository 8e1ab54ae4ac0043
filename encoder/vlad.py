"""A search vector that keeps the distribution of the trunk's local features: VLAD over learned words.

The model's own vector averages each encoder stage over the whole image, which keeps the mean
of the local features and drops their distribution; this is the default search vector instead.
The hand-crafted baseline that beat it (HOG + colour histogram) is a pair of *histograms*.
VLAD (Jegou et al., 2010, "Aggregating local descriptors into a compact image representation")
is the learned counterpart: every location's
feature vector of every stage (a local descriptor) is assigned to the nearest of K "words", k-means
centres fitted on the folder's own descriptors, and the residuals to each word are summed. The
result keeps which kinds of local pattern the image holds and how they deviate from their word,
wherever they are, so it survives crops and resizing as a histogram does.

Before the trunk's stages comes one more: the picture's own colours, 2 x 2-averaged
(:func:`colour_map`), whose descriptors are chromaticities (the baseline that beat the trunk on
photographs is half a colour histogram; docs/benchmarks.md, "A colour stage in the VLAD").

Per stage: descriptors square-rooted and unit length (Hellinger, as HOG's are); K = 64 words;
residuals summed per word, signed square root, each word's block unit length (intra-normalisation,
Arandjelovic and Zisserman 2013), the stage's block unit length. The stages are concatenated
(64 x (3 + 240) = 15,552-d for the default trunk) and projected on their first principal
components, fitted on the training images, to the dimension of the model's own vector (240): the
index stays the same size. All of it is fitted once after training and stored beside the weights as safetensors.

Fitted statistics that behave on 100 images and on a million: the words are fitted on at most
``SAMPLE_DESCRIPTORS`` descriptors drawn evenly across at most ``WORD_IMAGES`` images (a 64-px
image gives 1,024 first-stage descriptors, so even 100 images give 100,000), the projection on at
most ``SAMPLE_IMAGES`` images. When there are fewer images than dimensions the projection keeps
only the components the images support and the rest of the vector is zero, so its dimension (and
the index's) does not depend on the folder's size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: The file beside a model's weights that holds its VLAD words and projection.
VLAD_FILE = "vlad.safetensors"
#: Words per stage (64 and 256 measured within 0.005 on the tuning corpus; 64 is 4x smaller).
WORDS = 64
#: At most this many local descriptors per stage for the k-means fit.
SAMPLE_DESCRIPTORS = 200_000
#: The descriptors are drawn from at most this many images (one pass over a million would cost
#: as much as embedding them).
WORD_IMAGES = 8192
#: At most this many images for the projection's fit (its cost grows as the cube: 2,048 take ~3 s).
SAMPLE_IMAGES = 2048
#: Descriptors assigned to their words at once on a CPU (:func:`aggregate`): 4,096 x 64 distances, 1 MB.
ROWS_AT_ONCE = 4096


def local_descriptors(fmap: Tensor) -> Tensor:
    """(B, C, h, w) stage output -> (B, h*w, C): every location's features, square-rooted, unit length.

    Computed as the square root of the features over their sum (the same thing: |sqrt(x)|^2 =
    sum(x)), in the maps' own layout, where the sum over channels is a strided reduction instead
    of one over a transposed view: half the time of the first stage's descriptors."""
    x = fmap.float().clamp_min(0).flatten(2)  # (B, C, L)
    return sqrt_(x / x.sum(1, keepdim=True).clamp_min(1e-12)).transpose(1, 2)


def sqrt_(x: Tensor) -> Tensor:
    """`x`'s square root, in place. On a CPU through NumPy: torch's float32 square root there takes
    about 7x as long on zeros as on other values (AVX2, torch 2.14), and most of a ReLU's outputs
    are zeros; NumPy's takes the same time for all, and is correctly rounded where torch's is one
    unit in the last place off for about a sixth of all values (docs/benchmarks.md, "The VLAD's
    assignment in cache-sized pieces, and its square roots")."""
    if x.device.type == "cpu" and not x.requires_grad:
        a = x.numpy()
        np.sqrt(a, out=a)
        return x
    return x.sqrt_()


def aggregate(desc: Tensor, words: Tensor) -> Tensor:
    """VLAD of (B, L, C) descriptors against (K, C) words -> (B, K*C), unit length."""
    b, length, c = desc.shape
    k = words.shape[0]
    sq_words = (words * words).sum(1)
    v = torch.zeros(b * k, c, dtype=desc.dtype, device=desc.device)
    # On a CPU, a few images at a time: a batch's distances at once are (B*L, K) floats, 67 MB for
    # 256 images' first-stage descriptors, and such a buffer is fresh memory (page faults) on every
    # call; ~4,096 rows stay in cache. 2x faster for the whole aggregation, the same result
    # (docs/benchmarks.md, "The VLAD's assignment in cache-sized pieces"). A GPU takes the batch whole.
    step = max(1, ROWS_AT_ONCE // length if desc.device.type == "cpu" else b)  # never 0 (an empty batch)
    for i in range(0, b, step):
        flat = desc[i : i + step].reshape(-1, c)  # (n*L, C), contiguous
        n = flat.shape[0] // length
        # nearest word by Euclidean distance: |w|^2 - 2 d.w (|d|^2 is the same for every word)
        dist = torch.addmm(sq_words, flat, words.T, alpha=-2)
        # NumPy's argmin along rows is ~3x torch's on a CPU
        nearest = torch.from_numpy(dist.numpy().argmin(1)) if dist.device.type == "cpu" else dist.argmin(1)
        # residuals summed per (image, word). Each descriptor's residual is taken before the sum: the
        # sum of a word's descriptors less count x word loses the small residual of a flat area to
        # float32 cancellation, and the intra-normalisation below blew that rounding up to a unit block
        first = torch.arange(i, i + n, device=desc.device).unsqueeze(1) * k
        slot = (nearest.view(n, length) + first).flatten()
        v.index_add_(0, slot, flat - words.index_select(0, nearest))
    v = v.view(b, k, c)
    v = v.sign() * sqrt_(v.abs())
    v = F.normalize(v, dim=2, eps=1e-6)
    return F.normalize(v.reshape(b, k * c), dim=1, eps=1e-6)


def colour_map(x: Tensor) -> Tensor:
    """(B, 3, S, S) images in [0, 1] -> (B, 3, S/2, S/2): the picture's own colours, averaged over
    2 x 2 pixels (the first trunk stage's resolution). As a VLAD stage its descriptors
    (:func:`local_descriptors`: square root over the sum) are chromaticities, whatever the brightness."""
    return F.avg_pool2d(x.float(), 2)


def stage_maps(x: Tensor, trunk_maps: list[Tensor], colour: bool) -> list[Tensor]:
    """The maps a pooling with (or without) the colour stage describes, in its order: the picture's
    colours first (:func:`colour_map`), then the trunk's stages."""
    return [colour_map(x), *trunk_maps] if colour else list(trunk_maps)


@dataclass(frozen=True)
class Vlad:
    """Stage maps -> the projected VLAD search vector (unit length before the model's calibration)."""

    words: tuple[Tensor, ...]  # per stage, (K, C_stage) float32
    mean: Tensor  # (sum K*C,) the fitted VLAD mean
    projection: Tensor  # (sum K*C, D) principal axes
    #: Whether the first stage is the picture's colours (:func:`colour_map`), before the trunk's
    #: stages (:meth:`stages`). False for poolings fitted before it existed.
    colour: bool = False

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    def stages(self, x: Tensor, trunk_maps: list[Tensor]) -> list[Tensor]:
        """The maps this pooling describes, for images `x` whose trunk gave `trunk_maps`."""
        return stage_maps(x, trunk_maps, self.colour)

    def raw(self, maps: list[Tensor]) -> Tensor:
        """(B, sum K*C) float32: each stage's VLAD, concatenated, unit length."""
        parts = [aggregate(local_descriptors(m), w) for m, w in zip(maps, self.words, strict=True)]
        return F.normalize(torch.cat(parts, dim=1), dim=1, eps=1e-6)

    def __call__(self, maps: list[Tensor]) -> Tensor:
        """Maps on this pooling's device (see :meth:`to`) -> (B, D) projected vectors."""
        return (self.raw(maps) - self.mean) @ self.projection

    def to(self, device: torch.device | str) -> Vlad:
        words = tuple(w.to(device) for w in self.words)
        return Vlad(words, self.mean.to(device), self.projection.to(device), self.colour)


def _kmeans(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres of (n, C) descriptors: SciPy's Lloyd iterations from k random descriptors
    (k-means++ seeding cost 30 s on 200,000 descriptors, the iterations 1.5 s)."""
    from scipy.cluster.vq import kmeans2

    k = min(k, len(sample))
    with warnings.catch_warnings():  # a word left empty is harmless: its block of every vector is 0
        warnings.filterwarnings("ignore", "One of the clusters is empty")
        centres, _ = kmeans2(sample.astype(np.float64), k, iter=20, minit="points", seed=seed)
    return centres.astype(np.float32)


def fit_vlad(maps_of, n_images: int, dim: int, *, words: int = WORDS, seed: int = 0, colour: bool = False) -> Vlad:
    """Fit the words and the projection on `n_images` images.

    `maps_of(index_array)` returns the stage maps (a list of (b, C, h, w) tensors) of those images
    (:meth:`Vlad.stages`: with `colour`, the first is their :func:`colour_map`); it is called in
    batches of at most 256, on at most ``WORD_IMAGES`` images for the words and ``SAMPLE_IMAGES``
    for the projection.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    # 1. the words: an even share of descriptors from each of up to WORD_IMAGES images, per stage
    order = np.sort(rng.choice(n_images, min(n_images, WORD_IMAGES), replace=False))
    per_image = max(1, SAMPLE_DESCRIPTORS // max(len(order), 1))
    samples: list[list[np.ndarray]] | None = None
    for s in range(0, len(order), 256):
        maps = maps_of(order[s : s + 256])
        if samples is None:
            samples = [[] for _ in maps]
        for j, m in enumerate(maps):
            d = local_descriptors(m)
            take = min(per_image, d.shape[1])
            pick = torch.rand(d.shape[:2], generator=gen).argsort(dim=1)[:, :take]  # each image's own draw
            samples[j].append(torch.gather(d, 1, pick.unsqueeze(2).expand(-1, -1, d.shape[2])).flatten(0, 1).numpy())
    assert samples is not None, "fit_vlad needs at least one image"
    word_sets = tuple(
        torch.from_numpy(_kmeans(np.concatenate(parts), words, seed + s)) for s, parts in enumerate(samples)
    )
    # 2. the projection: principal axes of the VLAD vectors of up to SAMPLE_IMAGES images
    probe = Vlad(word_sets, torch.zeros(1), torch.zeros(1, 1), colour)
    chosen = np.sort(rng.choice(n_images, min(n_images, SAMPLE_IMAGES), replace=False))
    raw = torch.cat([probe.raw(maps_of(chosen[s : s + 256])) for s in range(0, len(chosen), 256)])
    mean = raw.double().mean(0)
    x = raw - mean.float()
    # principal axes from the small side: x x^T (n x n) rather than x^T x (15,360 squared)
    var, u = torch.linalg.eigh((x @ x.T).double())
    x = x.double()
    # components at float32 rounding's level (~1e-7 of the largest) are not in the data: dropped
    keep = min(dim, int((var > var.max() * 1e-5).sum()))
    var, u = var.flip(0)[:keep], u.flip(1)[:, :keep]
    axes = torch.zeros(x.shape[1], dim, dtype=x.dtype)
    axes[:, :keep] = (x.T @ u) / var.sqrt()  # unit columns; the rest zero, so the dimension is fixed
    return Vlad(word_sets, mean.float(), axes.float(), colour)


def save_vlad(vlad: Vlad, directory: Path) -> None:
    from safetensors.torch import save_file

    from .atomic import atomic_write_via

    tensors = {f"words.{i}": w.contiguous() for i, w in enumerate(vlad.words)}
    tensors["mean"] = vlad.mean.contiguous()
    tensors["projection"] = vlad.projection.contiguous()
    meta = {"colour": "1" if vlad.colour else "0"}
    atomic_write_via(Path(directory) / VLAD_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_vlad(directory: Path) -> Vlad | None:
    """The VLAD pooling saved with a model, or None (a model whose vector is the mean pooling)."""
    from safetensors import safe_open

    from .errors import CheckpointError

    path = Path(directory) / VLAD_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            stages = sorted(int(k.split(".")[1]) for k in keys if k.startswith("words."))
            words = tuple(f.get_tensor(f"words.{i}").float() for i in stages)
            mean, projection = f.get_tensor("mean").float(), f.get_tensor("projection").float()
            colour = (f.metadata() or {}).get("colour") == "1"  # absent: fitted before the colour stage
    except Exception as exc:  # safetensors raises its own types; any failure is a bad checkpoint
        raise CheckpointError(f"{path}: unreadable VLAD pooling ({exc})") from None
    raw_dim = sum(w.shape[0] * w.shape[1] for w in words)
    if stages != list(range(len(stages))) or mean.shape != (raw_dim,) or projection.shape[0] != raw_dim:
        raise CheckpointError(f"{path}: VLAD words, mean and projection do not fit together")
    if colour and words[0].shape[1] != 3:
        raise CheckpointError(f"{path}: the colour stage's words are not colours")
    return Vlad(words, mean, projection, colour)
