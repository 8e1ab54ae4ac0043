"""A fast lane for the busiest request: ``GET /images/{id}/similar`` answered from the table.

With the precomputed neighbour table and the published hit rows, a by-id query is
two binary searches in memory (~0.03 ms at 1M images), and FastAPI's routing,
dependency resolution and parameter validation around it cost several times that:
in process, at 1M, a request took 0.22 ms through the route and 0.065 ms through
this lane. This pure ASGI middleware answers the plain, well-formed case itself,
before the router is entered. It only ever answers requests the FastAPI route would
accept, with the same values, and returns the same bytes; anything else (a
parameter it does not recognise as plainly valid, a path filter, a page past the
table, an unknown id, a missing token) goes on to the route, which stays the one
definition of the endpoint: its validation, its errors and its OpenAPI description.

It is a middleware of the app, not a wrapper around it, so that what FastAPI and
Starlette do for every request (their telemetry hooks, the 500 handler) still wraps it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..engine import EngineError, Hit
from .auth import bearer_matches
from .deps import K_MAX, OFFSET_MAX

_PATH = re.compile(r"/images/(0|[1-9][0-9]{0,17})/similar")
_INT = re.compile(r"0|[1-9][0-9]{0,6}")
_FLOAT = re.compile(r"-?[0-9]{1,3}(\.[0-9]{1,17})?")
_KNOWN = frozenset({"k", "offset", "min_similarity", "path_prefix"})
_HEADERS = [(b"content-type", b"application/json")]


class FastLaneMiddleware:
    """Answer plain by-id similarity queries from the precomputed table; pass everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(scope["path"])
            if match is not None:
                body = self._answer(scope, int(match.group(1)))
                if body is not None:
                    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope, image_id: int) -> bytes | None:
        """The response body, or None to let the route handle the request."""
        state = scope["app"].state
        params = _params(scope["query_string"])
        if params is None:
            return None
        token = state.settings.api_token
        if token and not _token_ok(scope, token):
            return None  # the route answers 401 with its message
        k, offset, min_similarity = params
        try:
            hits = state.engine.precomputed(image_id, k=k, offset=offset, min_similarity=min_similarity)
        except EngineError:  # NotFound included: the route says what is wrong
            return None
        if hits is None:
            return None
        return similar_body(image_id, k, offset, hits)


def similar_body(image_id: int, k: int, offset: int, hits: list[Hit]) -> bytes:
    """The JSON body of a by-id answer, for the lane and the route alike (the same bytes).
    orjson: ~1 us against ~14 for the standard library's json, ~8% of a whole request."""
    return orjson.dumps({"query": {"id": image_id}, "k": k, "offset": offset, "results": [h.as_dict() for h in hits]})


def _params(query_string: bytes) -> tuple[int, int, float | None] | None:
    """(k, offset, min_similarity) when every parameter is plainly valid; None otherwise.
    Unknown parameters are ignored, as FastAPI does; a repeated one is left to the route."""
    k, offset, min_similarity = 10, 0, None
    seen: set[str] = set()
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name not in _KNOWN:
            continue
        if name in seen or name == "path_prefix":  # a filtered query searches
            return None
        seen.add(name)
        if name == "k":
            if not _INT.fullmatch(value) or not 1 <= (k := int(value)) <= K_MAX:
                return None
        elif name == "offset":
            if not _INT.fullmatch(value) or not 0 <= (offset := int(value)) <= OFFSET_MAX:
                return None
        elif not _FLOAT.fullmatch(value) or not -1.0 <= (min_similarity := float(value)) <= 1.0:
            return None
    return k, offset, min_similarity


def _token_ok(scope: Scope, token: str) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":  # the first one, as Starlette's Headers.get reads it
            return bearer_matches(value.decode("latin-1"), token)
    return False
