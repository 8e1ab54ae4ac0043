"""The service itself: liveness, the index's statistics, and the web page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from ..deps import EngineDep, require_token

router = APIRouter()


@router.get("/stats", dependencies=[Depends(require_token)], summary="Size, model and index type")
def stats(engine: EngineDep) -> dict:
    return engine.stats()


@router.get("/healthz", summary="Liveness: 200 when the server answers")
async def healthz() -> dict:  # async: no threadpool hop (it is also the benchmarks' trivial ceiling)
    return {"status": "ok"}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    # The page is a static shell with no data in it; what it shows comes from the
    # token-protected endpoints above, so it is served without a token.
    return HTMLResponse(resources.files("search.api").joinpath("static/index.html").read_text(encoding="utf-8"))
