"""Limits on a request body, enforced while it streams in, before anything parses it: a size cap,
and a deadline (a client trickling a body at 100 bytes a second held its connection for ever)."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the cap. An HTTPException, so that a framework
    parsing the body (FastAPI wraps other errors into 400 "error parsing the body") lets it through as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, _too_large(max_bytes))


class BodyTooSlow(HTTPException):
    """Raised from `receive` when a body has not arrived by its deadline: a 408."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:.0f} s; send it again")


def _too_large(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes:,} bytes; send a smaller image"


class MaxBodySizeMiddleware:
    """Answer 413 when a request body is larger than `max_bytes`, 408 when it is too slow.

    Content-Length is checked up front; a chunked body with no length is
    counted as it arrives, so a client cannot stream past the cap either. The
    whole body must arrive within `body_timeout_s`, plus one second for every
    `min_rate` bytes the client announced (a large upload over a slow link is fine;
    a trickle is not).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout_s: float = 30.0, min_rate: int = 100_000) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.min_rate = min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = 0
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > self.max_bytes:
                    await self._reject(send)
                    return
        seen = 0
        started = False
        allowed = self.body_timeout_s + min(announced, self.max_bytes) / self.min_rate
        deadline: float | None = None

        async def counting_receive() -> Message:
            nonlocal seen, deadline
            if deadline is None:  # the clock starts when the app first asks for the body
                deadline = time.monotonic() + allowed
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise BodyTooSlow(allowed) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)
        except BodyTooSlow as exc:
            if not started:
                await self._reject(send, 408, exc.detail)

    async def _reject(self, send: Send, status: int = 413, detail: str | None = None) -> None:
        body = json.dumps({"detail": detail or _too_large(self.max_bytes)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
