"""The reports over HTTP, paginated: ``/reports/tiers``, ``/reports/duplicates``,
``/reports/neighbours`` and ``/reports/outliers``.

Near-duplicate groups and outlier scores are computed on first request and kept per
engine and index generation, so paging through them costs nothing more (outlier
scores are also cached on disk by :mod:`search.reports`). Groups resolved or dismissed
(``/duplicates/...``) are left out at each request, from the decisions as they are then.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from fastapi import APIRouter, Query

from ...engine import Engine
from ...reports import DEFAULT_K, TIERS, exact_duplicates, near_duplicates, neighbours_of_ids, outliers, scan_images
from ...review import hide_decided
from ..deps import EngineDep
from .review import TierName

router = APIRouter(prefix="/reports", tags=["reports"])

_lock = threading.RLock()  # re-entrant: a near-duplicate report asks for the cached scan
_cache: weakref.WeakKeyDictionary[Engine, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def _cached(engine: Engine, key: tuple, make) -> Any:
    """One computation per (engine, index generation, key); older generations are dropped."""
    gen = engine.snapshot().manifest.generation
    with _lock:  # one report at a time: they are CPU-bound and share the cores anyway
        entries = _cache.setdefault(engine, {})
        if (gen, *key) not in entries:
            for old in [k for k in entries if k[0] != gen]:
                del entries[old]
            entries[(gen, *key)] = make()
        return entries[(gen, *key)]


def _scan(engine: Engine):
    return _cached(engine, ("scan",), lambda: scan_images(engine))


def _page(items: list, offset: int, limit: int) -> list:
    return items[offset : offset + limit]


@router.get("/tiers", summary="The near-duplicate tiers and their similarity thresholds")
def tiers() -> dict:
    return {
        "tiers": [
            {
                "name": t.name,
                "threshold": t.threshold,
                "hamming": t.hamming,
                "crop_hamming": t.crop_hamming,
                "crowd_margin": t.crowd_margin,
                "detail_veto": t.detail_veto,
                "description": t.description,
            }
            for t in TIERS
        ]
    }


@router.get("/duplicates", summary="Groups of exact or near-duplicate images, one tier at a time")
def duplicates(
    engine: EngineDep,
    # A Literal: the schema lists the names, and any other gets FastAPI's 422 in the shape it documents.
    tier: TierName = Query("exact", description="'exact' (same bytes) or a near-duplicate tier name."),
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=1000),
    k: int = Query(DEFAULT_K, ge=2, le=256, description="Neighbours per image when looking for pairs."),
    phash: bool = Query(
        True, description="Also join neighbours whose perceptual hashes are close (decodes every image once; cached)."
    ),
    reviewed: bool = Query(
        False, description="Also the groups already resolved or dismissed (/duplicates/...), left out by default."
    ),
) -> dict:
    names = [t.name for t in TIERS]
    if tier == "exact":
        groups = _cached(engine, ("exact",), lambda: exact_duplicates(engine))
        threshold = None
    else:
        near = _cached(
            engine,
            ("near", k, phash),
            lambda: near_duplicates(engine, TIERS, k=k, phash=phash, scan=_scan(engine) if phash else None),
        )
        groups, threshold = near.groups[tier], TIERS[names.index(tier)].threshold
    if not reviewed:  # per request, not cached: decisions change without a new index generation
        groups = hide_decided(engine, groups)
    return {
        "tier": tier,
        "threshold": threshold,
        "total": len(groups),
        "offset": offset,
        "limit": limit,
        "groups": [g.as_dict() for g in _page(groups, offset, limit)],
    }


@router.get("/neighbours", summary="The top-k of each of a set of indexed images")
def neighbours(
    engine: EngineDep,
    ids: list[int] = Query(..., description="Ids of indexed images (repeat the parameter).", max_length=1000),
    # k x limit bounds one answer (100 x 100 hits, ~1 MB): 1,000 x 1,000 built 85 MB.
    k: int = Query(10, ge=1, le=100),
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=100, description="Queries per page (of `ids`)."),
) -> dict:
    page = _page(ids, offset, limit)
    return {
        "k": k,
        "total": len(ids),
        "offset": offset,
        "limit": limit,
        "queries": [q.as_dict() for q in neighbours_of_ids(engine, page, k)],
    }


@router.get("/outliers", summary="The images the autoencoder reconstructs worst, with the rule and a histogram")
def outlier_list(
    engine: EngineDep,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=1000),
) -> dict:
    o = outliers(engine, limit, offset=offset, scan=_scan(engine))
    return {**o.header(), "total": o.count, "offset": offset, "limit": limit, "results": [x.as_dict() for x in o.top]}
