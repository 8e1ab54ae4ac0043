"""The whole report: the sections asked for, computed with one shared decoding pass."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from indexer.catalog import STATUS_OK

from ..engine import Engine
from .duplicates import TIERS, exact_duplicates, near_duplicates
from .model import (
    Report,
    Tier,
)
from .outliers import outliers
from .pairs import DEFAULT_K
from .scan import scan_images
from .sets import neighbours_of_folder, neighbours_of_ids

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the whole report


def build_report(
    engine: Engine,
    *,
    duplicates: bool = True,
    near: Sequence[Tier] | None = TIERS,
    k: int = DEFAULT_K,
    queries: str | os.PathLike | Sequence[int] | None = None,
    neighbours_k: int = 10,
    outliers_top: int | None = None,
    workers: int | None = None,
    phash: bool = True,
) -> Report:
    """Compute the sections asked for. `queries`: a folder, or ids of indexed images.
    The near-duplicate perceptual hashes and the outlier scores share one decoding pass."""
    snap = engine.snapshot()
    report = Report(
        str(engine.index_dir),
        snap.manifest.model_id,
        engine.catalog.count(STATUS_OK),
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if duplicates:
        report.exact = exact_duplicates(engine)
    scan = None
    if outliers_top is not None or (near and phash and any(t.hamming is not None for t in near)):
        scan = scan_images(engine, workers=workers)
    if near:
        report.near = near_duplicates(engine, near, k=k, phash=phash, scan=scan)
    if queries is not None:
        report.neighbours_k = neighbours_k
        if isinstance(queries, (str, os.PathLike)):
            report.neighbours = neighbours_of_folder(engine, queries, neighbours_k, workers=workers)
        else:
            report.neighbours = neighbours_of_ids(engine, list(queries), neighbours_k)
    if outliers_top is not None:
        report.outliers = outliers(engine, outliers_top, scan=scan)
    return report


def write_report(report: Report, out: str | os.PathLike, fmt: str | None = None, **kw) -> Path:
    """Write `report` as html, json or csv (see :mod:`.formats`)."""
    from .formats import write_report as write

    return write(report, out, fmt, **kw)
