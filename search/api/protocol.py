"""A deadline on request headers, which uvicorn does not have.

uvicorn closes a keep-alive connection that stays idle between requests, but a connection that
never sends a request, or sends its headers a byte a second, stays open for ever: twelve such
connections were all still open after 120 s in a probe of the server, each holding a slot. An
ASGI middleware cannot help: the app is only called once the headers are complete. So the
server runs uvicorn's own httptools protocol with one addition: from the moment a connection
opens, and from the first byte of each further request on it, the headers must be complete
within ``header_timeout_s``, or the connection is closed. Slow bodies are the app's business
(:mod:`.limits`), because by then there is a request to answer.
"""

from __future__ import annotations

import asyncio

try:  # uvicorn[standard] brings httptools; without it, uvicorn's pure-Python h11 protocol is used as is
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - the project's own install always has httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


def guarded_protocol(header_timeout_s: float) -> type | None:
    """uvicorn's httptools protocol with a header deadline, or None where httptools is missing."""
    if HttpToolsProtocol is None:
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc,valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a further request on a kept-alive connection gets its own deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol
