"""Browsing the collection: ``GET /images`` (a page of indexed images, newest first or by
path, optionally under one folder), ``GET /folders`` (the folders and their image counts)
and ``GET /failed`` (the files the indexer could not read, and why). Read-only; the token
applies as on every data route. The queries are :mod:`search.browse`'s.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query

from ...browse import folders, list_failed, list_images
from ..deps import EngineDep, require_token
from ..schemas import FailedListOut, FailedOut, FolderOut, FoldersOut, ImageRowOut, ImagesOut

router = APIRouter(dependencies=[Depends(require_token)], tags=["browse"])

#: The most rows one page may ask for: a page is one SQL query, and the web page shows 60.
PAGE_MAX = 200
#: Deep enough for any collection one browses by hand; OFFSET beyond it is a scan nobody needs.
OFFSET_MAX = 10_000_000
FOLDERS_MAX = 5000

# No `responses=` here: create_app documents 401 (with a token) and the body limits on every route, and
# FastAPI documents its 422 (a parameter out of range, an unknown sort) in its own validation error shape.


@router.get("/images", summary="A page of the indexed images, newest first or by path")
def browse_images(
    engine: EngineDep,
    offset: int = Query(0, ge=0, le=OFFSET_MAX, description="Skip this many images (paging)."),
    limit: int = Query(60, ge=1, le=PAGE_MAX, description=f"Images per page, at most {PAGE_MAX}."),
    folder: str | None = Query(
        None, max_length=1024, description="Only images under this folder ('a/b'), relative to the indexed folder."
    ),
    sort: Literal["newest", "path"] = Query("newest", description="'newest' (file modified time) or 'path'."),
) -> ImagesOut:
    page = list_images(engine, offset=offset, limit=limit, folder=folder, sort=sort)
    return ImagesOut(
        total=page.total,
        offset=offset,
        limit=limit,
        folder=folder,
        sort=sort,
        images=[ImageRowOut(**r.as_dict()) for r in page.items],
    )


@router.get("/folders", summary="The folders that hold indexed images, with counts")
def folder_list(
    engine: EngineDep,
    limit: int = Query(
        1000, ge=1, le=FOLDERS_MAX, description=f"At most this many folders, in path order (<= {FOLDERS_MAX})."
    ),
) -> FoldersOut:
    found = folders(engine)
    return FoldersOut(total=len(found), folders=[FolderOut(folder=f, count=n) for f, n in found[:limit]])


@router.get("/failed", summary="Files the indexer could not read, and why")
def failed_list(
    engine: EngineDep,
    offset: int = Query(0, ge=0, le=OFFSET_MAX),
    limit: int = Query(100, ge=1, le=PAGE_MAX, description=f"Files per page, at most {PAGE_MAX}."),
) -> FailedListOut:
    page = list_failed(engine, offset=offset, limit=limit)
    return FailedListOut(
        total=page.total, offset=offset, limit=limit, files=[FailedOut(**r.as_dict()) for r in page.items]
    )
