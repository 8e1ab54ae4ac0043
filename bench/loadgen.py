"""A server on loopback and a load generator for it (bench/search_latency.py).

`Server` runs ``lookalike serve`` (or bench/trivial_app.py, the ceiling) in a
subprocess, optionally pinned to cores with taskset, and reads its CPU time and
memory from /proc. `measure` loads it from a small asyncio HTTP/1.1 keep-alive
client in this process (far cheaper per request than httpx, so it disturbs the
server less) and returns latency percentiles, requests/s and CPU per request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m search serve` in a subprocess, optionally pinned to cores with taskset."""

    def __init__(
        self,
        index_dir: Path | None,
        log_dir: Path,
        cores: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """The real server over `index_dir`; with `index_dir` None, bench/trivial_app.py (the ceiling)."""
        self.index_dir, self.cores, self.port = index_dir, cores, free_port()
        if index_dir is None:
            cmd = [sys.executable, str(Path(__file__).with_name("trivial_app.py")), str(self.port)]
        else:
            cmd = [sys.executable, "-m", "search", "serve", "--index", str(index_dir), "--port", str(self.port)]
        if cores is not None:
            cmd = ["taskset", "-c", cores, *cmd]  # taskset execs: the pid stays the server's
        self.command = " ".join(cmd)
        # No access log: the trivial app it is compared with writes none, and the figures predate it.
        base = {"LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_ACCESS_LOG": "0", "PYTHONPATH": str(REPO)}
        full_env = {**os.environ, **base, **(env or {})}
        self.log = open(log_dir / f"server-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > 300:
                self.stop()
                raise RuntimeError("server did not answer within 300 s")
            time.sleep(0.1)
        self.startup_s = round(time.perf_counter() - t0, 2)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process, all threads (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- the client


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
    return status, await reader.readexactly(length)


async def _load(port: int, make, concurrency: int, max_requests: int, max_seconds: float) -> dict[str, Any]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            req = make()
            start = time.perf_counter()
            writer.write(req)
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")

    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def _run_loop(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def measure(
    server: Server,
    make,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    warmup: int,
    client_cores: set[int] | None,
) -> dict[str, Any]:
    """Warm up, then send up to `max_requests` (or for `max_seconds`) over `concurrency` keep-alive connections."""
    old_affinity = os.sched_getaffinity(0) if client_cores else None
    if client_cores:
        os.sched_setaffinity(0, client_cores)  # this thread only: the event loop runs on it
    try:
        _run_loop(_load(server.port, make, concurrency, warmup, max_seconds))
        cpu0, own0 = server.cpu_s(), time.thread_time()
        res = _run_loop(_load(server.port, make, concurrency, max_requests, max_seconds))
        cpu1, own1 = server.cpu_s(), time.thread_time()
    finally:
        if old_affinity:
            os.sched_setaffinity(0, old_affinity)
    lat = sorted(res["latencies"])
    n = len(lat)
    if res["errors"]:
        print(f"  {len(res['errors'])} errors, first: {res['errors'][0]}")
    return {
        "concurrency": concurrency,
        "requests": n,
        "errors": len(res["errors"]),
        "seconds": round(res["elapsed"], 3),
        "p50_ms": round(percentile(lat, 50) * 1e3, 3),
        "p90_ms": round(percentile(lat, 90) * 1e3, 3),
        "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        "mean_ms": round(sum(lat) / max(1, n) * 1e3, 3),
        "requests_per_s": round(n / res["elapsed"], 1) if res["elapsed"] else 0.0,
        "server_cpu_ms_per_req": round((cpu1 - cpu0) / max(1, n) * 1e3, 3),
        "client_cpu_ms_per_req": round((own1 - own0) / max(1, n) * 1e3, 3),
    }
