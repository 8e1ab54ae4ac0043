"""A whole evaluation: every model and its baselines, scored in one run on the same decoded pixels."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from encoder import Encoder, ModelConfig
from encoder.decoding import decode_to_array

from .baselines import fit_hog_colour, fit_pca, fit_pixels
from .corpus import LabelledFolder, read_labelled_folder, subset_folder
from .errors import EvaluationError
from .metrics import Embedder, near_duplicate_queries, near_duplicate_recall, retrieval_metrics
from .models import ModelSpec, TrainedModel, spec_from_arg, train_models

log = logging.getLogger(__name__)

#: The near-duplicate queries: the picked images' indices, and per transform and input size their altered pixels.
NearDuplicates = tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]


@dataclass
class MethodResult:
    name: str
    kind: str  # "model", "pixels" or "pca"
    image_size: int
    dim: int
    metrics: dict[str, float]
    near_duplicate_recall_at_1: dict[str, float] | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    model_dir: str | None = None
    baseline_for: str | None = None


@dataclass
class EvaluationReport:
    folder: str
    images: int
    labels: int
    label_source: str
    seed: int
    methods: list[MethodResult]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.name == name)


@dataclass
class Gallery:
    """What every method is scored on: the corpus' pixels per input size, its labels, the near-duplicate queries."""

    pixels: dict[int, np.ndarray]
    labels: list[str]
    near_duplicates: NearDuplicates | None

    def score(self, name: str, kind: str, size: int, embed: Embedder, **extra: Any) -> MethodResult:
        """Embed the corpus at `size` and score it: retrieval by label, then near-duplicate recall (timed)."""
        t0 = time.perf_counter()
        vectors = embed(self.pixels[size])
        metrics = retrieval_metrics(vectors, self.labels)
        dup = None
        if self.near_duplicates is not None:
            pick, altered = self.near_duplicates
            dup = near_duplicate_recall(embed, vectors, pick, {t: altered[t][size] for t in altered})
        res = MethodResult(name, kind, size, int(vectors.shape[1]), metrics, dup, time.perf_counter() - t0, **extra)
        log.info("%-28s mAP@10 %.3f  P@1 %.3f", name, metrics["map_at_10"], metrics["precision_at_1"])
        return res


def evaluate(
    folder: str | os.PathLike,
    models: Sequence[str | os.PathLike | ModelSpec],
    *,
    work_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
    max_images: int | None = None,
    near_duplicates: int = 200,
    seed: int = 0,
    model_defaults: dict[str, Any] | None = None,
    train_defaults: dict[str, Any] | None = None,
    device: str | None = None,
    workers: int | None = None,
) -> EvaluationReport:
    """Score each model (a directory, or a kind trained here) and the pixel and PCA baselines.

    Kinds are trained on the evaluated folder itself (unsupervised: labels are never
    seen, except by `cvae`, which conditions on folder names), into `work_dir`.

    The stages, in order:

    1. `read_labelled_folder`: the images and their labels (a seeded subset with `max_images`);
    2. `resolve_specs`: each of `models` as a `ModelSpec`;
    3. `train_models`: train the kinds, on `training_folder` with `training_defaults`;
    4. `load_encoders`: every model, trained here or given;
    5. `decode_corpus`: the corpus' pixels at each model's input size;
    6. `near_duplicate_set`: altered copies of some of the images, for near-duplicate recall;
    7. `score_methods`: each model, then its pixel and PCA baselines (`Gallery.score`).
    """
    t_start = time.perf_counter()
    corpus = read_labelled_folder(
        folder, label_column=label_column, max_images=max_images, seed=seed, skip_dirs=_skip(work_dir)
    )
    specs = resolve_specs(models, work_dir)
    trained = train_models(
        specs,
        training_folder(folder, corpus, work_dir, max_images),
        Path(work_dir or "."),  # only used when a kind is trained, and resolve_specs made sure there is one
        model_defaults or {},
        training_defaults(train_defaults, seed=seed, device=device, max_images=max_images),
    )
    encoders = load_encoders(trained, device)
    sizes = sorted({enc.image_size for _, enc in encoders} or {ModelConfig.image_size})
    gallery = Gallery(
        pixels=decode_corpus(corpus.paths, sizes, workers),
        labels=corpus.labels,
        near_duplicates=near_duplicate_set(corpus.paths, sizes, near_duplicates, seed),
    )
    return EvaluationReport(
        folder=os.fspath(folder),
        images=len(corpus),
        labels=len(set(corpus.labels)),
        label_source=corpus.label_source,
        seed=seed,
        methods=score_methods(encoders, gallery, seed),
        seconds=round(time.perf_counter() - t_start, 1),
    )


# ---------------------------------------------------------------- the stages, in the order evaluate() runs them


def resolve_specs(
    models: Sequence[str | os.PathLike | ModelSpec], work_dir: str | os.PathLike | None
) -> list[ModelSpec]:
    """Each model as a spec; a kind to train needs a `work_dir` to train into."""
    specs = [m if isinstance(m, ModelSpec) else spec_from_arg(os.fspath(m)) for m in models]
    if any(s.kind for s in specs) and work_dir is None:
        raise EvaluationError("training a model kind needs a work_dir")
    return specs


def training_folder(
    folder: str | os.PathLike, corpus: LabelledFolder, work_dir: str | os.PathLike | None, max_images: int | None
) -> Path:
    """What the kinds train on: the folder itself, or with `max_images` a folder of links to the subset."""
    return Path(folder) if not max_images else subset_folder(corpus, Path(work_dir or "."))


def training_defaults(
    overrides: dict[str, Any] | None, *, seed: int, device: str | None, max_images: int | None
) -> dict[str, Any]:
    """`TrainConfig` fields for the kinds: the run's seed and device; on a subset, no image cap of their own."""
    defaults = {"seed": seed, "device": device, **(overrides or {})}
    if max_images:
        defaults.setdefault("max_images", None)
    return defaults


def load_encoders(trained: Sequence[TrainedModel], device: str | None) -> list[tuple[TrainedModel, Encoder]]:
    """Each model with its encoder, loaded for inference."""
    return [(t, Encoder(t.model_dir, device=device)) for t in trained]


def decode_corpus(paths: Sequence[Path], sizes: Sequence[int], workers: int | None) -> dict[int, np.ndarray]:
    """The corpus' pixels at each input size; an image that fails to decode fails the evaluation."""
    pixels: dict[int, np.ndarray] = {}
    for s in sizes:
        arr, _ok, failed = decode_to_array(paths, s, workers=workers)
        if failed:
            raise EvaluationError(f"{len(failed)} images failed to decode, e.g. {failed[0][0]}: {failed[0][1]}")
        pixels[s] = arr
    return pixels


def near_duplicate_set(paths: Sequence[Path], sizes: Sequence[int], n: int, seed: int) -> NearDuplicates | None:
    """`n` images altered every way, at every input size (`near_duplicate_queries`); None when `n` is 0."""
    return near_duplicate_queries(paths, sizes, n, seed) if n else None


def score_methods(models: Sequence[tuple[TrainedModel, Encoder]], gallery: Gallery, seed: int) -> list[MethodResult]:
    """Each model, each followed by the pixel, PCA and HOG + colour baselines at its input size and
    dimension (once each). Without models, the three baselines at the one input size, PCA to 128 dimensions.
    """
    methods: list[MethodResult] = []
    baselines_done: set[tuple[str, int, int]] = set()
    for model, enc in models:
        name, size, dim = model.spec.name, enc.image_size, enc.dim
        methods.append(
            gallery.score(
                name,
                "model",
                size,
                enc.embed_pixels,
                train_seconds=model.train_seconds,
                model_dir=os.fspath(model.model_dir),
            )
        )
        if ("pixels", size, 0) not in baselines_done:
            baselines_done.add(("pixels", size, 0))
            pix = fit_pixels(gallery.pixels[size])
            methods.append(gallery.score(f"pixels {size}px", "pixels", size, pix, baseline_for=name))
        if ("pca", size, dim) not in baselines_done:
            baselines_done.add(("pca", size, dim))
            pca = fit_pca(gallery.pixels[size], dim, seed)
            methods.append(gallery.score(f"pca-{dim} {size}px", "pca", size, pca, baseline_for=name))
        if ("hog", size, 0) not in baselines_done:
            baselines_done.add(("hog", size, 0))
            hc = fit_hog_colour(gallery.pixels[size])
            methods.append(gallery.score(f"hog+colour {size}px", "hog", size, hc, baseline_for=name))
    if not models:
        size = min(gallery.pixels)
        methods.append(gallery.score(f"pixels {size}px", "pixels", size, fit_pixels(gallery.pixels[size])))
        methods.append(gallery.score(f"pca-128 {size}px", "pca", size, fit_pca(gallery.pixels[size], 128, seed)))
        methods.append(gallery.score(f"hog+colour {size}px", "hog", size, fit_hog_colour(gallery.pixels[size])))
    return methods


def _skip(work_dir: str | os.PathLike | None) -> tuple[str, ...]:
    return (os.fspath(Path(work_dir).resolve()),) if work_dir else ()
