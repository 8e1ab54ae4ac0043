"""Dependencies the routes share: the engine and settings, the token check, the paging
parameters, and the mapping of image errors to HTTP statuses.

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in
the threadpool, and on the by-id hot path those hops cost more than the search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError

from encoder import ImageLoadError, LoadFailure

from ..engine import Engine
from .auth import bearer_matches
from .settings import Settings

# The bounds of the by-id parameters, for the route (get_paging) and the fast lane alike.
K_MAX = 1000
OFFSET_MAX = 100_000


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
        return {
            "k": self.k,
            "offset": self.offset,
            "min_similarity": self.min_similarity,
            "path_prefix": self.path_prefix,
        }


async def get_paging(
    k: int = Query(10, ge=1, le=K_MAX, description="How many results."),
    offset: int = Query(0, ge=0, le=OFFSET_MAX, description="Skip this many results (paging)."),
    min_similarity: float | None = Query(None, ge=-1.0, le=1.0, description="Drop results below this cosine."),
    path_prefix: str | None = Query(None, max_length=1024, description="Only images whose path starts so."),
) -> Paging:
    return Paging(k, offset, min_similarity, path_prefix)


PagingDep = Annotated[Paging, Depends(get_paging)]


#: What an image id looks like in a path: Python's int() also takes "1_0", " 7" and "+7", and
#: /images/1_0 must not be image 10.
_IMAGE_ID = re.compile(r"-?[0-9]+")


async def plain_image_id(request: Request) -> None:
    """Refuse an {image_id} that int() would take but that is not written as a plain integer."""
    raw = request.path_params.get("image_id")
    if raw is not None and not _IMAGE_ID.fullmatch(raw):
        raise RequestValidationError(
            [
                {
                    "type": "int_parsing",
                    "loc": ("path", "image_id"),
                    "input": raw,
                    "msg": "Input should be a plain integer (digits, an optional minus sign)",
                }
            ]
        )


def image_error(exc: ImageLoadError) -> HTTPException:
    """The HTTP answer to an upload that could not be decoded, by what went wrong."""
    reason = exc.reason
    if exc.kind is LoadFailure.NOT_AN_IMAGE:
        return HTTPException(
            415, f"the upload is not an image Pillow can read ({reason}); send a JPEG, PNG, GIF, WebP, BMP or TIFF"
        )
    if exc.kind is LoadFailure.TOO_LARGE:
        return HTTPException(413, f"the image is too large: {reason}")
    return HTTPException(400, f"the upload could not be decoded: {reason}")
