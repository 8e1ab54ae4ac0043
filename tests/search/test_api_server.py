"""The real `lookalike serve` (a subprocess on loopback) over raw sockets: path traversal, the
loopback-only bind, the access log, the upload caps with and without a Content-Length, and an
index swapped while it serves. The app through TestClient is tests/search/test_api.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import fill_folder, write_jpeg

from .conftest import BOUNDARY, MISSING, SERVER_MAX_UPLOAD, Corpus, Server, index_ids, multipart


def raw_request(server: Server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """Send `path` exactly as written (no client-side normalisation of '..' or '//')."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


PASSWD = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").exists() else b"root:x:0:0:"

TRAVERSALS = [
    "/images/../../etc/passwd",
    "/images/..%2f..%2fetc%2fpasswd",
    "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/file",
    "/images/%2e%2e/%2e%2e/etc/passwd/file",
    "/images/1/../../../etc/passwd",
    "/images/1/file/../../../../etc/passwd",
    "/images/1%2f..%2f..%2f..%2fetc%2fpasswd/file",
    "/images/..%5c..%5cetc%5cpasswd/file",
    "/images/%252e%252e%252fetc%252fpasswd/file",
    "//etc/passwd",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static/index.html/../../../../etc/passwd",
    "/docs/../../etc/passwd",
    "/images/1/file?path=/etc/passwd",
    "/images/1/thumbnail?path=../../../etc/passwd",
    "/images/file:%2f%2f%2fetc%2fpasswd/file",
    "/images/%00/file",
    "/etc/passwd",
]


def test_path_traversal_never_serves_a_file(server: Server) -> None:
    for path in TRAVERSALS:
        status, body = raw_request(server, "GET", path)
        assert status < 500, path
        assert b"root:" not in body and PASSWD not in body, path
        if status == 200:  # only an indexed image may come back (e.g. /images/1/file, its query string ignored)
            assert path.startswith("/images/1/") and body[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")


def test_real_server_endpoints(server: Server, live: Corpus) -> None:
    ids = index_ids(live.index)
    rel = sorted(p for p in ids if p.endswith(".png"))[0]
    status, body = server.get(f"/images/{ids[rel]}/file")
    assert status == 200 and body == (live.folder / rel).read_bytes()
    assert server.get(f"/images/{ids[rel]}/similar?k=3")[0] == 200
    assert server.get(f"/images/{MISSING}/similar")[0] == 404
    assert server.get(f"/images/{ids['link.jpg']}/file")[0] == 404  # the symlink out of the folder
    status, body = raw_request(
        server,
        "POST",
        "/search?k=3",
        multipart((live.folder / rel).read_bytes()),
        {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert status == 200 and b'"results"' in body
    assert b'id="file-input"' in server.get("/")[1]


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port`, from /proc/net/tcp (Linux)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(addr, 16))))
    return found


def test_real_server_binds_loopback_only(server: Server) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read the listening address from")
    assert listening_addresses(server.port) == {"127.0.0.1"}


def post_chunked(server: Server, body: bytes, chunk: int = 16 * 1024) -> tuple[int, bytes]:
    """POST /search with Transfer-Encoding: chunked and no Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/search")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for i in range(0, len(body), chunk):
                part = body[i : i + chunk]
                conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent: read its answer
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_real_server_writes_an_access_log(server: Server, live: Corpus) -> None:
    assert server.get("/healthz")[0] == 200
    assert server.get("/images/999999/similar?k=3")[0] in (401, 404)
    log = live.index.parent / f"server-{server.port}.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "/images/999999/similar?k=3" not in log.read_text(errors="replace"):
        time.sleep(0.1)
    text = log.read_text(errors="replace")
    assert '"GET /healthz HTTP/1.1" 200' in text and "/images/999999/similar?k=3" in text


def test_real_server_upload_caps(server: Server, live: Corpus) -> None:
    big = multipart(os.urandom(SERVER_MAX_UPLOAD + 200_000))
    # with a Content-Length over the cap: refused up front
    status, body = raw_request(
        server,
        "POST",
        "/search",
        big[:1000],
        {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(len(big))},
    )
    assert status == 413 and b"limit" in body
    # chunked, no Content-Length: counted as it streams in
    status, body = post_chunked(server, big)
    assert status == 413 and b"limit" in body, body
    # a chunked upload under the cap is fine
    image = sorted(live.folder.rglob("*.png"))[0].read_bytes()
    status, body = post_chunked(server, multipart(image), chunk=1000)
    assert status == 200, body


def test_index_swap_while_serving(server: Server, live: Corpus, make_index: Callable[[Path], Path]) -> None:
    """Re-index the served folder three times (images added, then removed) while three threads hammer the
    server: every answer is a 200, and the server moves on to each new generation by itself."""
    ids = index_ids(live.index)
    stats0 = json.loads(server.get("/stats")[1])
    targets = sorted(ids.values())[:4]  # original images: in every generation
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        i = 0
        while not stop.is_set():
            path = f"/images/{targets[(i + n) % len(targets)]}/similar?k=5" if i % 4 else "/stats"
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses[resp.status] += 1
            except Exception as exc:  # a dropped connection is a failure too
                with lock:
                    errors.append(f"{path}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            i += 1
        conn.close()

    def wait_for(generation: int, count: int) -> dict:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the server looks for a new generation about once a second
            stats = json.loads(server.get("/stats")[1])
            if stats["generation"] >= generation and stats["vectors"] == stats["count"] == count:
                return stats
            time.sleep(0.1)
        pytest.fail(f"the server never moved to generation {generation} with {count} images: {stats}")

    added = live.folder / "added"
    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        fill_folder(added, 3, ("fish", "flowers"))
        write_jpeg(added / "generated.jpg", (64, 64), seed=300)
        make_index(live.folder)
        wait_for(stats0["generation"] + 1, stats0["count"] + 7)
        fill_folder(added, 2, ("vegetables",))
        make_index(live.folder)
        wait_for(stats0["generation"] + 2, stats0["count"] + 9)
        shutil.rmtree(added / "fish")
        make_index(live.folder)
        final = wait_for(stats0["generation"] + 3, stats0["count"] + 6)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 30  # the hammering really went on through the swaps
    new_ids = index_ids(live.index)
    status, body = server.get(f"/images/{new_ids['added/generated.jpg']}/similar?k=50")
    assert status == 200 and len(json.loads(body)["results"]) == final["count"] - 1
