"""Response models: what each endpoint answers, as the OpenAPI schema documents it."""

from __future__ import annotations

from pydantic import BaseModel


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
