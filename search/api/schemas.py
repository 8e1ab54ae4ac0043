"""Response models: what each endpoint answers, as the OpenAPI schema documents it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class HitOut(BaseModel):
    id: int
    path: str
    similarity: float = Field(description="Cosine of the two search vectors: about 0 unrelated, 1 the same picture.")
    percentile: float | None = Field(
        description="The similarity's rank among random pairs of the index's images, in percent "
        "(50: a typical pair; 99.9: closer than all but one pair in a thousand), the same meaning "
        "in any collection; null for an index of fewer than two images."
    )
    width: int | None
    height: int | None


class SearchOut(BaseModel):
    #: What was asked: {"id": N} for an indexed image; {"upload": name, "bytes": n, "indexed":
    #: [{"id", "path"}...]} for an upload, "indexed" naming the indexed images it is (the same
    #: bytes), which are left out of the results.
    query: dict
    k: int
    offset: int
    results: list[HitOut]


class ImageOut(BaseModel):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    format: str | None
    content_hash: str | None
    duplicate_of: int | None
    embedded_at: str | None
    model_id: str | None


class ImageRowOut(BaseModel):
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    mtime: float = Field(..., description="The file's modification time when indexed, seconds since the epoch.")


class ImagesOut(BaseModel):
    total: int = Field(..., description="Indexed images under the folder (all pages).")
    offset: int
    limit: int
    folder: str | None
    sort: str
    images: list[ImageRowOut]


class FolderOut(BaseModel):
    folder: str = Field(..., description="'/'-separated, relative to the indexed folder.")
    count: int = Field(..., description="Indexed images in it, sub-folders included.")


class FoldersOut(BaseModel):
    total: int
    folders: list[FolderOut]


class FailedOut(BaseModel):
    id: int
    path: str
    size: int
    reason: str | None = Field(..., description="Why the indexer could not read it.")


class FailedListOut(BaseModel):
    total: int
    offset: int
    limit: int
    files: list[FailedOut]


class ErrorOut(BaseModel):
    """Every error the app raises itself. FastAPI's own 422 (a request that fails validation) is
    the other shape, ``{"detail": [{"loc", "msg", "type"}...]}``, which FastAPI documents itself."""

    detail: str = Field(..., description="What went wrong and what to send instead.")


#: A route's (or router's) `responses=`: status -> what FastAPI puts in the OpenAPI schema.
Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """One documented error status, with the {"detail": str} body every app-raised error has."""
    return {"model": ErrorOut, "description": description}


#: What MaxBodySizeMiddleware (limits.py) may answer to any request, before a route sees it.
LIMIT_ERRORS: Responses = {
    408: error("The request body did not arrive in time (by default 30 s, plus 1 s per 100 KB announced)."),
    413: error("The request body is larger than the server's limit (LOOKALIKE_MAX_UPLOAD_BYTES)."),
}
#: By-id routes: an id that is not (or no longer) an indexed image, or whose file is gone.
NOT_FOUND: Responses = {404: error("No indexed image with this id, or its file is gone or unreadable.")}
