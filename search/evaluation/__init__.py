"""Retrieval quality: does a learned latent space find similar images better than pixels do?

A labelled folder goes in (label = a column of ``labels.csv`` when asked for,
else the image's folder relative to the root). Every image is a query; its k
nearest neighbours (itself excluded) are scored against its label:

- precision@1, precision@10: the share of the first k neighbours with the query's label;
- mAP@10: mean over queries of AP@10 = sum_{i<=10} P@i * rel_i / min(10, R), with R the
  number of other images that share the query's label;
- near-duplicate recall@1: an image is altered (resize, JPEG recompress, 10% crop,
  brightness, flip) and used as a query against the untouched corpus; a hit is when its
  original comes first.

Queries whose label has no other member are left out (they cannot score). Every method
is measured in the same run on the same decoded pixels: trained models (search vector =
``Encoder.embed_pixels``, unit length, cosine) and two baselines, raw pixels at the
model's input size and PCA at the model's search-vector dimension.

One module a job:

- ``corpus``: the labelled folder (and a folder of links to a subset of it);
- ``metrics``: nearest neighbours, retrieval metrics, near-duplicate queries and recall;
- ``baselines``: raw pixels, PCA, and HOG + colour histogram (hand-crafted, no learning);
- ``models``: model specs from the command line, training the kinds;
- ``run``: ``evaluate``, the whole run, stage by stage, and its report;
- ``outputs``: ratios to the baselines, markdown, the bar chart, the report files;
- ``errors``: ``EvaluationError``, a ``LookalikeError``.
"""

from __future__ import annotations

from .baselines import fit_hog_colour, fit_pca, fit_pixels, hog_colour_features
from .corpus import LabelledFolder, read_labelled_folder
from .errors import EvaluationError
from .metrics import (
    NEAR_DUPLICATE_TRANSFORMS,
    Embedder,
    K,
    near_duplicate_bytes,
    near_duplicate_queries,
    near_duplicate_recall,
    nearest_neighbours,
    retrieval_metrics,
)
from .models import ModelSpec, spec_from_arg, train_spec
from .outputs import ratios, save_bar_chart, to_markdown, write_report
from .run import EvaluationReport, MethodResult, evaluate

__all__ = [
    "K",
    "NEAR_DUPLICATE_TRANSFORMS",
    "Embedder",
    "EvaluationError",
    "EvaluationReport",
    "LabelledFolder",
    "MethodResult",
    "ModelSpec",
    "evaluate",
    "fit_hog_colour",
    "fit_pca",
    "fit_pixels",
    "hog_colour_features",
    "near_duplicate_bytes",
    "near_duplicate_queries",
    "near_duplicate_recall",
    "nearest_neighbours",
    "ratios",
    "read_labelled_folder",
    "retrieval_metrics",
    "save_bar_chart",
    "spec_from_arg",
    "to_markdown",
    "train_spec",
    "write_report",
]
