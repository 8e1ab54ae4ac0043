"""The HTTP API: a thin FastAPI layer over :class:`search.engine.Engine`.

The engine is opened once in the lifespan handler and handed to routes via a
dependency, so tests can pass their own (``create_app(settings, engine=...)``).
Every error a client can cause comes back as JSON ``{"detail": ...}`` with a
4xx status that says what to fix; no path from a request ever reaches the
filesystem (images are addressed by catalog id only).
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from encoder import ImageLoadError

from .auth import bearer_matches
from .engine import Engine, EngineError, Hit, NotFound
from .fast_lane import K_MAX, OFFSET_MAX, FastLaneMiddleware, similar_body
from .limits import MaxBodySizeMiddleware
from .settings import Settings

# ---------------------------------------------------------------- response models


class HitOut(BaseModel):
    id: int
    path: str
    similarity: float
    width: int | None
    height: int | None


class SearchOut(BaseModel):
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


# ---------------------------------------------------------------- dependencies
#
# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in
# the threadpool, and on the by-id hot path those hops cost more than the search.


async def get_engine(request: Request) -> Engine:
    return request.app.state.engine


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def require_token(request: Request, settings: SettingsDep) -> None:
    """With LOOKALIKE_API_TOKEN set, a matching 'Authorization: Bearer <token>' is required."""
    if not settings.api_token:
        return
    if not bearer_matches(request.headers.get("authorization", ""), settings.api_token):
        raise HTTPException(
            401,
            "missing or wrong API token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


@dataclass(frozen=True)
class Paging:
    """The query parameters every similarity search takes."""

    k: int
    offset: int
    min_similarity: float | None
    path_prefix: str | None

    def kwargs(self) -> dict:
        return {"k": self.k, "offset": self.offset, "min_similarity": self.min_similarity,
                "path_prefix": self.path_prefix}  # fmt: skip


async def get_paging(
    k: int = Query(10, ge=1, le=K_MAX, description="How many results."),
    offset: int = Query(0, ge=0, le=OFFSET_MAX, description="Skip this many results (paging)."),
    min_similarity: float | None = Query(None, ge=-1.0, le=1.0, description="Drop results below this cosine."),
    path_prefix: str | None = Query(None, max_length=1024, description="Only images whose path starts so."),
) -> Paging:
    return Paging(k, offset, min_similarity, path_prefix)


PagingDep = Annotated[Paging, Depends(get_paging)]


def image_error(exc: ImageLoadError) -> HTTPException:
    reason = exc.reason
    if "not a recognised image format" in reason:
        return HTTPException(415, f"the upload is not an image Pillow can read ({reason}); send a JPEG, PNG, GIF, "
                             "WebP, BMP or TIFF")  # fmt: skip
    if "over the limit" in reason or "too many pixels" in reason:
        return HTTPException(413, f"the image is too large: {reason}")
    return HTTPException(400, f"the upload could not be decoded: {reason}")


def _out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(**h.as_dict()) for h in hits]


# ---------------------------------------------------------------- routes

data = APIRouter(dependencies=[Depends(require_token)])


@data.post("/search", response_model=SearchOut, summary="Images like an uploaded one")
def search_upload(
    engine: EngineDep,
    paging: PagingDep,
    file: UploadFile = File(..., description="The query image."),
) -> SearchOut:
    content = file.file.read()
    try:
        hits = engine.search_image(content, **paging.kwargs())
    except ImageLoadError as exc:
        raise image_error(exc) from None
    return SearchOut(
        query={"upload": file.filename, "bytes": len(content)}, k=paging.k, offset=paging.offset, results=_out(hits)
    )


@data.get("/images/{image_id}/similar", response_model=SearchOut, summary="Images like an indexed one")
async def similar(image_id: int, engine: EngineDep, paging: PagingDep) -> Response:
    # The hot path. From the precomputed neighbour table and the published hit rows it
    # is two lookups in memory, so it runs on the event loop: a threadpool hop would cost more.
    # A live search (a page past the table, a path filter) takes milliseconds and
    # releases the GIL, so it goes to the threadpool, where searches use every core.
    # JSON is returned directly: the response model documents the shape, and
    # re-validating it would cost as much as the lookup. Plain queries seldom get
    # here: the fast lane (search/fast_lane.py) answers them first, with the same bytes.
    kw = paging.kwargs()
    hits = engine.precomputed(image_id, **kw)
    if hits is None:
        hits = await run_in_threadpool(engine.search_id, image_id, **kw)
    return Response(similar_body(image_id, paging.k, paging.offset, hits), media_type="application/json")


@data.get("/images/{image_id}", response_model=ImageOut, summary="What the catalog knows of an image")
def image_meta(image_id: int, engine: EngineDep) -> ImageOut:
    rec = engine.get(image_id).as_dict()
    return ImageOut(**{k: rec[k] for k in ImageOut.model_fields})


@data.get("/images/{image_id}/thumbnail", summary="A small JPEG of an image", response_class=Response)
def thumbnail(image_id: int, engine: EngineDep, size: int = Query(256, ge=16, le=1024)) -> Response:
    try:
        body = engine.thumbnail(image_id, size)
    except ImageLoadError as exc:
        raise HTTPException(404, f"image {image_id} can no longer be decoded: {exc.reason}") from None
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@data.get("/images/{image_id}/file", summary="The original file", response_class=FileResponse)
def original(image_id: int, engine: EngineDep) -> FileResponse:
    path = engine.file_path(image_id)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, content_disposition_type="inline", filename=path.name)


@data.get("/stats", summary="Size, model and index type")
def stats(engine: EngineDep) -> dict:
    return engine.stats()


public = APIRouter()


@public.get("/healthz", summary="Liveness: 200 when the server answers")
async def healthz() -> dict:  # async: no threadpool hop (it is also the benchmarks' trivial ceiling)
    return {"status": "ok"}


@public.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    # The page is a static shell with no data in it; what it shows comes from the
    # token-protected endpoints above, so it is served without a token.
    return HTMLResponse(resources.files("search").joinpath("static/index.html").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the app


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. With no `engine`, one is opened on `settings.index` at start-up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(
            settings.index,
            device=settings.device,
            catalog_url=settings.catalog_url,
            max_pixels=settings.max_pixels,
            reload_in_background=True,  # a new generation must not stall the event loop while it opens
        )
        try:
            yield
        finally:
            if own:
                app.state.engine.close()

    app = FastAPI(
        title="lookalike",
        summary="Find look-alike images in your own collection.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    if engine is not None:
        app.state.engine = engine
    app.add_middleware(MaxBodySizeMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.fast_lane:
        app.add_middleware(FastLaneMiddleware)  # added last: the outermost, so it sees requests first

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, exc: EngineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.include_router(public)
    app.include_router(data)
    from .reports_api import router as reports_router  # imports this module: load it late

    app.include_router(reports_router, dependencies=[Depends(require_token)])
    return app
