"""The API token check, shared by the route dependency, the fast lane and the gate in front of both."""

from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (scheme case-insensitive),
    compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


#: What answers without a token: the liveness probe, the page shell (its data comes from the
#: protected endpoints) and the API's own description.
PUBLIC_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
UNAUTHORISED = "missing or wrong API token: send 'Authorization: Bearer <token>'"


class TokenGateMiddleware:
    """Answer 401 to a request without the token before its body is read.

    The routes check the token too, but FastAPI reads and parses a request's body before it
    runs a route's dependencies: a 20 MB upload without a token was read in full before its
    401. This gate sits in front and looks at the headers only."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
            if not bearer_matches(header.decode("latin-1"), self.token):
                body = json.dumps({"detail": UNAUTHORISED}).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                    (b"connection", b"close"),  # the unread body must not be taken for the next request
                ]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
