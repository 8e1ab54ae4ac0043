"""A real server against slow, idle and unauthorised clients (issue 14): nothing holds a
connection for ever, and a request without the token is refused before its body is read."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import TOKEN, Corpus, run_server

#: Short deadlines so the test runs in seconds; the defaults (10 s headers, 30 s body) are the same code.
FAST = {
    "LOOKALIKE_HEADER_TIMEOUT_S": "1",
    "LOOKALIKE_BODY_TIMEOUT_S": "1",
    "LOOKALIKE_MIN_UPLOAD_RATE": "100000000",
    "LOOKALIKE_KEEP_ALIVE_S": "1",
}


def _closed_after(sock: socket.socket, limit_s: float, trickle: bytes = b"", every_s: float = 0.3) -> float:
    """Seconds until the server closes `sock` (sending `trickle` a byte at a time meanwhile)."""
    t0 = time.monotonic()
    sock.settimeout(every_s)
    sent = 0
    while time.monotonic() - t0 < limit_s:
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - t0
            sent += 1
    return float("inf")


@pytest.fixture(scope="module")
def guarded(live: Corpus):
    with run_server(live.index, {**FAST, "LOOKALIKE_API_TOKEN": TOKEN}) as server:
        yield server


def test_idle_and_slow_header_connections_are_closed(guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as idle:
        assert _closed_after(idle, 10) < 4  # never sent a byte
    with socket.create_connection(("127.0.0.1", guarded.port)) as slow:
        header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        assert _closed_after(slow, 10, trickle=header) < 4  # headers a byte at a time
    assert guarded.get("/healthz")[0] == 200  # and the server still answers


def test_a_slow_body_gets_a_408(guarded) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
        )
        s.settimeout(10)
        t0 = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            s.sendall(b"x")  # a body at a few bytes a second
            time.sleep(0.2)
            try:
                s.settimeout(0.01)
                answer += s.recv(65536)
            except TimeoutError:
                pass
            assert time.monotonic() - t0 < 10, "the slow body was never cut off"
        assert answer.startswith(b"HTTP/1.1 408")


def test_no_token_is_refused_before_the_body_is_read(guarded) -> None:
    body_size = 20 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(
            b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {body_size}\r\n\r\n".encode()
        )
        s.sendall(b"x" * 65536)  # 64 KB of the 20 MB: the answer must not wait for the rest
        s.settimeout(5)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401") and b"www-authenticate: bearer" in answer.lower()
    assert guarded.get("/healthz")[0] == 200  # public paths stay open
