"""Outliers: the images the autoencoder reconstructs worst.

Outlier rule: robust z-score of log(score), z = 0.6745 (x - median) / MAD (Iglewicz and
Hoaglin), above :data:`OUTLIER_Z`. The log because errors are skewed: a few images
reconstruct much worse than the rest, none much better. Scores come from the shared
decoding pass (:mod:`search.reports.scan`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from indexer import ImageRecord
from indexer.catalog import in_chunks

from ..engine import Engine
from .scan import Scan, scan_images

OUTLIER_Z = 3.5


def _paths(engine: Engine, ids: Iterable[int]) -> dict[int, str]:
    ids = [int(i) for i in ids]
    out: dict[int, str] = {}
    with engine.catalog.session() as s:
        for chunk in in_chunks(ids):
            q = select(ImageRecord.id, ImageRecord.path).where(ImageRecord.id.in_(chunk))
            out.update(dict(s.execute(q).all()))
    return out


@dataclass
class Outlier:
    id: int
    path: str
    score: float
    z: float
    flagged: bool

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "score": float(f"{self.score:.6g}"),
            "z": round(self.z, 3),
            "flagged": self.flagged,
        }


@dataclass
class Outliers:
    """Outlier scores of every distinct image: the worst `top`, the rule, and a histogram."""

    count: int
    median: float
    mad: float
    threshold_z: float
    threshold_score: float
    flagged: int
    histogram_edges: list[float]
    histogram_counts: list[int]
    top: list[Outlier]
    failed: list[dict]
    model_id: str | None = None

    def header(self) -> dict:
        return {
            "count": self.count,
            "model_id": self.model_id,
            "rule": {
                "statistic": "robust z-score of log(reconstruction error): 0.6745 * (log s - median) / MAD",
                "threshold_z": self.threshold_z,
                "threshold_score": float(f"{self.threshold_score:.6g}"),
                "median_log_score": round(self.median, 6),
                "mad_log_score": round(self.mad, 6),
            },
            "flagged": self.flagged,
            "histogram": {"edges": [float(f"{e:.6g}") for e in self.histogram_edges], "counts": self.histogram_counts},
            "failed": self.failed,
        }


def robust_z(scores: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(z, median, MAD) of log(scores): z = 0.6745 (x - median) / MAD."""
    x = np.log(np.maximum(scores, 1e-12))
    med = float(np.median(x)) if len(x) else 0.0
    mad = float(np.median(np.abs(x - med))) if len(x) else 0.0
    if mad <= 1e-12:  # half the scores equal: fall back to the mean absolute deviation
        mad = float(np.mean(np.abs(x - med))) / 0.7979 * 0.6745 if len(x) else 0.0
    z = 0.6745 * (x - med) / mad if mad > 1e-12 else np.zeros_like(x)
    return z, med, mad


def outliers(
    engine: Engine,
    top: int = 20,
    *,
    offset: int = 0,
    bins: int = 40,
    scan: Scan | None = None,
    **kw,
) -> Outliers:
    """The worst-reconstructed images (`offset`..`offset+top`), the robust-z rule and a
    histogram of all scores. `scan`: the result of :func:`scan_images`, if at hand."""
    scan = scan if scan is not None else scan_images(engine, **kw)
    ids, scores, failed = scan.ids, scan.scores, scan.failed
    z, med, mad = robust_z(scores)
    threshold_score = math.exp(med + OUTLIER_Z * mad / 0.6745) if mad > 0 else float("inf")
    if len(scores):
        logs = np.log10(np.maximum(scores, 1e-12))
        counts, edges = np.histogram(logs, bins=bins)
        edges = 10.0**edges
    else:
        counts, edges = np.zeros(0, int), np.zeros(0)
    order = np.argsort(-scores, kind="stable")[offset : offset + max(0, top)]
    paths = _paths(engine, ids[order])
    worst = [
        Outlier(int(ids[o]), paths[int(ids[o])], float(scores[o]), float(z[o]), bool(z[o] > OUTLIER_Z))
        for o in order
        if int(ids[o]) in paths
    ]
    return Outliers(
        len(scores),
        med,
        mad,
        OUTLIER_Z,
        threshold_score,
        int((z > OUTLIER_Z).sum()),
        edges.tolist(),
        counts.tolist(),
        worst,
        failed,
        engine.snapshot().manifest.model_id,
    )
