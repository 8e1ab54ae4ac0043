"""The server's keep-alive timeout against clients' own idle expiry (issue 14, item 9).

A client that reuses a kept-alive connection at the moment the server closes it loses its
request ("Server disconnected without sending a response"); bench/keepalive_race.py showed
it with httpx (5 s expiry) against a 5 s server timeout. The default must outlast common
clients' expiry and still close an idle connection within the 30 s the hardening targets."""

from __future__ import annotations

import httpx2 as httpx  # the dev extra's httpx (same API, same 5 s keepalive_expiry)
import pytest

from search.api.settings import Settings


def test_the_default_keep_alive_outlasts_httpx_and_stays_under_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_KEEP_ALIVE_S", raising=False)
    keep_alive = Settings().keep_alive_s
    assert httpx.Limits().keepalive_expiry is not None
    assert httpx.Limits().keepalive_expiry < keep_alive < 30
    assert keep_alive > 15  # aiohttp's default keepalive_timeout


def test_the_keep_alive_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_KEEP_ALIVE_S", "7.5")
    assert Settings().keep_alive_s == 7.5
    monkeypatch.setenv("LOOKALIKE_KEEP_ALIVE_S", "0")
    with pytest.raises(ValueError):
        Settings()
