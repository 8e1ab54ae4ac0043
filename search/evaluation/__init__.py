"""Retrieval quality: does a learned latent space find similar images better than pixels do? (see ``run``)."""

from __future__ import annotations

from .run import (
    NEAR_DUPLICATE_TRANSFORMS,
    EvaluationError,
    ModelSpec,
    evaluate,
    fit_pca,
    fit_pixels,
    near_duplicate_bytes,
    nearest_neighbours,
    read_labelled_folder,
    retrieval_metrics,
    spec_from_arg,
    to_markdown,
    write_report,
)

__all__ = [
    "NEAR_DUPLICATE_TRANSFORMS",
    "EvaluationError",
    "ModelSpec",
    "evaluate",
    "fit_pca",
    "fit_pixels",
    "near_duplicate_bytes",
    "nearest_neighbours",
    "read_labelled_folder",
    "retrieval_metrics",
    "spec_from_arg",
    "to_markdown",
    "write_report",
]
