"""Response models: what each endpoint answers, as the OpenAPI schema documents it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HitOut(BaseModel):
    id: int
    path: str
    similarity: float
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
