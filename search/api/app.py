"""The HTTP API: a thin FastAPI layer over :class:`search.engine.Engine`.

The engine is opened once in the lifespan handler and handed to routes via a
dependency, so tests can pass their own (``create_app(settings, engine=...)``).
Every error a client can cause comes back as JSON ``{"detail": ...}`` with a
4xx status that says what to fix; no path from a request ever reaches the
filesystem (images are addressed by catalog id only). The app imports the
routers; nothing imports the app back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from encoder.errors import ConfigError

from ..engine import Engine, EngineError, NotFound
from ..review import recover
from .auth import PUBLIC_PATHS, TokenGateMiddleware
from .deps import require_token
from .fast_lane import FastLaneMiddleware
from .limits import MaxBodySizeMiddleware
from .routes import browse, images, reports, review, service
from .schemas import LIMIT_ERRORS, ErrorOut
from .settings import Settings


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. With no `engine`, one is opened on `settings.index` at start-up."""
    settings = settings or Settings()
    if settings.allow_writes and not settings.api_token:
        raise ConfigError("writes need a token: set LOOKALIKE_API_TOKEN as well as --allow-writes")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(
            settings.index,
            device=settings.device,
            catalog_url=settings.catalog_url,
            max_pixels=settings.max_pixels,
            decode_slots=settings.decode_slots,
            reload_in_background=True,  # a new generation must not stall the event loop while it opens
        )
        if settings.allow_writes:  # finish or undo a review operation a kill interrupted, before serving
            recover(app.state.engine.index_dir, app.state.engine.catalog.url)
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
        responses=LIMIT_ERRORS,  # MaxBodySizeMiddleware answers these on any path, before routing
    )
    app.state.settings = settings
    if engine is not None:
        app.state.engine = engine
    app.add_middleware(
        MaxBodySizeMiddleware,
        max_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        min_rate=settings.min_upload_rate,
    )
    if settings.api_token:  # outside the routes: a request without the token is refused before its body
        app.add_middleware(TokenGateMiddleware, token=settings.api_token)
    if settings.fast_lane:
        app.add_middleware(FastLaneMiddleware)  # added last: the outermost, so it sees requests first

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, exc: EngineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    app.include_router(service.router)
    app.include_router(images.router)
    app.include_router(browse.router)
    app.include_router(reports.router, dependencies=[Depends(require_token)])
    app.include_router(review.router, dependencies=[Depends(require_token)])
    if settings.api_token:
        _document_token(app)
    return app


def _document_token(app: FastAPI) -> None:
    """Add the bearer token to the OpenAPI schema: a security scheme, and a 401 on every operation
    the token gate covers (all but auth.PUBLIC_PATHS). Done on the finished schema, from the gate's
    own list, because the gate answers in front of routing: a route cannot say which 401s it gets.
    Only on a server that has a token: without one, no request is ever refused for want of it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and caches app.openapi_schema; amended in place
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "The server's LOOKALIKE_API_TOKEN: 'Authorization: Bearer <token>'.",
            }
            components.setdefault("schemas", {}).setdefault("ErrorOut", ErrorOut.model_json_schema())
            unauthorised = {
                "description": "Missing or wrong API token (send 'Authorization: Bearer <token>').",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
            }
            for path, operations in schema.get("paths", {}).items():
                if path in PUBLIC_PATHS:
                    continue
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation["responses"].setdefault("401", unauthorised)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to amend the schema
