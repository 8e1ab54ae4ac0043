"""Review and resolve near-duplicates over HTTP: ``/duplicates/...``.

Reading (the quarantine batches, the dismissed pairs) needs only the token, if one is set.
Writing (resolve, dismiss, restore) needs the server started with ``--allow-writes`` *and*
``LOOKALIKE_API_TOKEN``; otherwise 403. Images are named by catalog id and batches by
name: no path from a request reaches the filesystem. The work is :mod:`search.review`'s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from indexer.decisions import DismissedPair, has_tables

from ...engine import NotFound
from ...review import (
    Batch,
    Conflict,
    FileChanged,
    ReviewError,
    batches,
    dismiss,
    plan_resolution,
    resolve,
    restore,
)
from ..deps import EngineDep, SettingsDep
from ..schemas import Responses, error

router = APIRouter(prefix="/duplicates", tags=["review"])

#: The tiers a request may name: "exact" and search.reports.TIERS (test_schema checks they agree). Spelled
#: out, not built from TIERS, so that type checkers see a Literal; FastAPI documents it as an enum and
#: answers its own 422 to any other name, in the validation error shape the schema documents.
TierName = Literal["exact", "near-identical", "near-duplicate", "similar"]
WRITES_OFF = (
    "writes are off on this server: start it with `lookalike serve --allow-writes` (or LOOKALIKE_ALLOW_WRITES=1) "
    "and LOOKALIKE_API_TOKEN"
)


class GroupIn(BaseModel):
    """One group as a report showed it: the image to keep and the others."""

    tier: TierName = Field(..., description="The group's tier.")
    keeper_id: int = Field(..., description="Id of the image to keep.")
    member_ids: list[int] = Field(..., min_length=1, max_length=1000, description="Ids of the others.")


class RestoreIn(BaseModel):
    batch: str = Field(..., max_length=64, description="The batch to put back, as resolve named it.")


class QuarantineEntryOut(BaseModel):
    path: str = Field(..., description="Where the file was (and goes back to), relative to the indexed folder.")
    quarantine_path: str = Field(..., description="Where it is now, relative to the index directory.")
    content_hash: str
    keeper_path: str
    tier: str


class BatchOut(BaseModel):
    batch: str
    moved_at: str
    restored_at: str | None
    files: list[QuarantineEntryOut]


class BatchesOut(BaseModel):
    batches: list[BatchOut]


class RestoreOut(BaseModel):
    restored: BatchOut


class DismissOut(BaseModel):
    ids: list[int]
    new_pairs: int = Field(..., description="Pairs recorded now (a pair dismissed before is not counted again).")


class DismissedPairOut(BaseModel):
    hash_a: str
    hash_b: str
    tier: str
    decided_at: str


class DismissedOut(BaseModel):
    pairs: list[DismissedPairOut]


async def require_writes(settings: SettingsDep) -> None:
    """Writes only on a server started for them, and with a token (which require_token checks)."""
    if not (settings.allow_writes and settings.api_token):
        raise HTTPException(403, WRITES_OFF)


Writes = Annotated[None, Depends(require_writes)]

# 401 is documented by create_app, on every route the token gate covers, when the server has a token;
# 422 (unknown tier, no members...) by FastAPI, in its validation error shape.
WRITE_ERRORS: Responses = {
    400: error("The request cannot be done (a path outside the folder, a keeper among the members...)."),
    403: error("Writes are off (no --allow-writes, or no token on the server)."),
    404: error("An id is not an indexed image, or no such batch."),
    409: error("A file changed since it was indexed, a path is taken, or the index is busy."),
}


def _http(exc: ReviewError | NotFound) -> HTTPException:
    if isinstance(exc, NotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, (FileChanged, Conflict)):
        return HTTPException(409, str(exc))
    return HTTPException(400, str(exc))


def _batch_out(b: Batch) -> BatchOut:
    return BatchOut.model_validate(b.as_dict())


@router.get("/batches", summary="Files moved into the quarantine, batch by batch")
def list_batches(
    engine: EngineDep, restored: bool = Query(False, description="Also the batches already put back.")
) -> BatchesOut:
    return BatchesOut(batches=[_batch_out(b) for b in batches(engine.catalog, include_restored=restored)])


@router.get("/dismissed", summary="Pairs of images marked 'not duplicates' (by content hash)")
def list_dismissed(engine: EngineDep) -> DismissedOut:
    if not has_tables(engine.catalog):
        return DismissedOut(pairs=[])
    with engine.catalog.session() as s:
        rows = list(s.scalars(select(DismissedPair).order_by(DismissedPair.decided_at)))
    return DismissedOut(
        pairs=[
            DismissedPairOut(hash_a=r.hash_a, hash_b=r.hash_b, tier=r.tier, decided_at=r.decided_at.isoformat())
            for r in rows
        ]
    )


@router.post(
    "/resolve",
    summary="Keep one image of a group; move the others into the index's quarantine (undo: /duplicates/restore)",
    responses=WRITE_ERRORS,
)
def resolve_group(body: GroupIn, engine: EngineDep, _writes: Writes) -> BatchOut:
    try:
        batch = resolve(engine, plan_resolution(engine, body.keeper_id, body.member_ids, body.tier))
    except (ReviewError, NotFound) as exc:
        raise _http(exc) from None
    return _batch_out(batch)


@router.post(
    "/dismiss", summary="Mark a group's images as not duplicates: it stays out of reports", responses=WRITE_ERRORS
)
def dismiss_group(body: GroupIn, engine: EngineDep, _writes: Writes) -> DismissOut:
    try:
        new = dismiss(engine, body.keeper_id, body.member_ids, body.tier)
    except (ReviewError, NotFound) as exc:
        raise _http(exc) from None
    return DismissOut(ids=[body.keeper_id, *body.member_ids], new_pairs=new)


@router.post("/restore", summary="Put a quarantine batch's files back where they were", responses=WRITE_ERRORS)
def restore_batch(body: RestoreIn, engine: EngineDep, _writes: Writes) -> RestoreOut:
    try:
        (done,) = restore(engine.index_dir, body.batch, catalog_url=engine.catalog.url)
    except (ReviewError, NotFound) as exc:
        raise _http(exc) from None
    return RestoreOut(restored=_batch_out(done))
