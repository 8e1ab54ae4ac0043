"""`lookalike serve --workers 2` (issue 16, read replicas): two processes answer on one port,
each moves to a newly published generation by itself, a worker that dies is replaced, and
stopping the server leaves no worker behind.

Which process answered a request is read from the server's access log, where each line of a
multi-worker server carries its process id: every request here has a unique query string, so
its line (and pid) can be found. Those pids are checked against the server's child processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import fill_folder, write_jpeg

from .conftest import Server, index_ids, run_server

_LINE = re.compile(r"\[(\d+)\] .*probe=([0-9a-f]{32})")


def _children(pid: int) -> set[int]:
    """Live child processes of `pid` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _log(server: Server, folder: Path) -> Path:
    return folder / f"server-{server.port}.log"


def ask(server: Server, log: Path, path: str = "/stats") -> tuple[int, dict]:
    """(pid of the worker that answered, the JSON answer) of one request on a new connection."""
    probe = uuid.uuid4().hex
    status, body = server.get(f"{path}?probe={probe}")
    assert status == 200, body
    for _ in range(50):  # the line is written before the answer is sent; allow for the file's buffering
        for line in reversed(log.read_text(errors="replace").splitlines()):
            m = _LINE.search(line)
            if m and m.group(2) == probe:
                return int(m.group(1)), json.loads(body)
        time.sleep(0.05)
    raise AssertionError(f"no access log line for probe {probe}")


def answer_from_each(server: Server, log: Path, want: Callable[[dict], bool], workers: int = 2) -> dict[int, dict]:
    """Ask until `workers` different processes have each given an answer that passes `want`."""
    good: dict[int, dict] = {}
    deadline = time.monotonic() + 30
    while len(good) < workers:
        assert time.monotonic() < deadline, f"only {sorted(good)} answered as wanted"
        pid, answer = ask(server, log)
        if want(answer):
            good[pid] = answer
    return good


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, make_index: Callable[[Path], Path]) -> Iterator[tuple]:
    """A server with two workers over its own small index (6 images), which the tests re-index."""
    folder = fill_folder(tmp_path_factory.mktemp("replicas") / "images", 2)
    index = make_index(folder)
    with run_server(index, {"LOOKALIKE_WORKERS": "2"}) as server:
        yield server, folder, make_index


def test_both_workers_answer_and_follow_a_new_generation(replicas) -> None:
    server, folder, make_index = replicas
    log = _log(server, folder)
    workers = _children(server.process.pid)
    first = answer_from_each(server, log, lambda s: True)
    assert set(first) <= workers and len(set(first)) == 2  # two child processes of the server
    generation = {s["generation"] for s in first.values()}.pop()
    count = next(iter(first.values()))["count"]

    for i in range(3):  # a re-index published while both serve
        write_jpeg(folder / "added" / f"new{i}.jpg", (72, 56), seed=300 + i)
    make_index(folder)
    moved = answer_from_each(server, log, lambda s: s["generation"] > generation)
    assert set(moved) == set(first)  # the same two processes, each on the new generation
    assert all(s["count"] == s["vectors"] == count + 3 for s in moved.values())


def test_a_dead_worker_is_replaced_and_stopping_leaves_none(tmp_path_factory, make_index) -> None:
    folder = fill_folder(tmp_path_factory.mktemp("replicas-stop") / "images", 1)
    index = make_index(folder)
    with run_server(index, {"LOOKALIKE_WORKERS": "2"}) as server:
        log = _log(server, folder)
        before = answer_from_each(server, log, lambda s: True)
        children = _children(server.process.pid)  # the workers, and multiprocessing's resource tracker
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not (new := _children(server.process.pid) - children):  # noticed within a second, replaced
            assert time.monotonic() < deadline, "the dead worker was never replaced"
            time.sleep(0.2)
        after = answer_from_each(server, log, lambda s: True)
        assert victim not in after and set(after) - set(before) == new
        assert f"Child process [{victim}] died" in log.read_text()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 0
        every = children | new
        deadline = time.monotonic() + 5
        while left := [p for p in every if _alive(p)]:
            assert time.monotonic() < deadline, f"left behind: {left}"
            time.sleep(0.1)


def test_one_worker_answers_a_kept_alive_connection_without_nagle_delay(server: Server, live) -> None:
    """The one-process server serves on the socket it bound, as a TCP socket: served from its bare
    fd, uvicorn took it for a Unix socket, asyncio left Nagle's algorithm on, and each answer
    (head and body written apart) waited for the client's delayed ACK: p50 44 ms, 347 req/s."""
    import http.client
    import statistics

    image_id = min(index_ids(live.index).values())
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    took = []
    try:
        for _ in range(30):
            t0 = time.perf_counter()
            conn.request("GET", f"/images/{image_id}/similar?k=5")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            took.append(time.perf_counter() - t0)
    finally:
        conn.close()
    assert statistics.median(took) < 0.02, f"median {statistics.median(took) * 1e3:.1f} ms"
