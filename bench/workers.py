"""Read replicas (issue 16, item 4): by-id throughput of `lookalike serve --workers N`, N = 1, 2, 4.

    .venv/bin/python bench/workers.py [--size 100000] [--workers 1,2,4] [--concurrency 16] [--seconds 8]

One synthetic index (bench/search_latency.py's: `--size` random vectors of the model's
dimension, its neighbour table and hit rows, built once and cached under
bench/results/workers/) is served in turn by 1, 2 and 4 worker processes on one port
(uvicorn's supervisor over one listening socket). For each, once every worker has finished
starting (their CPU time stops growing), the load generator of bench/loadgen.py sends
`GET /images/{random id}/similar?k=10` (answered by the fast lane from the memory-mapped
neighbour table) over `--concurrency` keep-alive connections for `--seconds`, after a warm-up.

Reported per N: requests a second, latency p50/p99, the server's CPU per request (workers and
supervisor), each worker's share of that CPU (how evenly the kernel spread the connections),
and memory: each worker's RSS and PSS (proportional set size: a page shared by k processes
counts 1/k in each, so the PSS total is what the processes take together; RSS counts the
shared index pages, and the shared libraries, once in every worker) and the supervisor's.

The client runs in this process on the same cores as the server, so on a 2-core machine it
takes a good part of one: more workers than free cores cannot add throughput, and ~2x over
one worker is the ceiling there. Prints a table, writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, table, write_json
from loadgen import Server, measure
from search_latency import ensure_index, ensure_model, request_maker

WORK = RESULTS / "workers"


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def workers_of(server: Server) -> list[int]:
    """The worker processes: the server's spawned children, or the server itself when it has none."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc(int(entry.name), "stat")
            child = stat and int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid
            if child and "spawn_main" in _proc(int(entry.name), "cmdline"):  # not multiprocessing's resource tracker
                pids.append(int(entry.name))
    return sorted(pids) or [server.proc.pid]


def cpu_s(pid: int) -> float:
    stat = _proc(pid, "stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """RSS (and its anonymous and file-backed parts) and PSS of a process, MiB."""
    out: dict[str, float] = {}
    for line in _proc(pid, "status").splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[{"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}[key]] = round(
                int(line.split()[1]) / 1024, 1
            )
    for line in _proc(pid, "smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            out["pss"] = round(int(line.split()[1]) / 1024, 1)
    return out


def wait_settled(server: Server, n: int, timeout_s: float = 300) -> float:
    """Seconds until `n` workers exist and none of them used CPU for a whole second (all started)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        pids = workers_of(server)
        if len(pids) == n or n == 1:
            before = sum(cpu_s(p) for p in pids)
            time.sleep(1.0)
            if sum(cpu_s(p) for p in workers_of(server)) - before < 0.03:
                return round(time.perf_counter() - t0, 1)
        else:
            time.sleep(0.5)
    raise RuntimeError(f"{n} workers did not settle within {timeout_s} s")


def run(n_workers: int, idx: Path, n_vectors: int, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(idx, WORK, env={"LOOKALIKE_WORKERS": str(n_workers)})
    try:
        settle_s = wait_settled(server, n_workers)
        pids = workers_of(server)
        idle = {p: memory_mib(p) for p in pids}
        make = request_maker("by-id", n_vectors, b"", seed=n_workers)
        everyone = sorted({*pids, server.proc.pid})
        measure(server, make, args.concurrency, args.warmup, args.seconds, 0, None)  # warm every connection path
        cpu0 = {p: cpu_s(p) for p in everyone}
        r = measure(server, make, args.concurrency, args.requests, args.seconds, 0, None)
        cpu = {p: cpu_s(p) - cpu0[p] for p in everyone}
        loaded = {p: memory_mib(p) for p in pids}
        supervisor = memory_mib(server.proc.pid) if n_workers > 1 else {}
    finally:
        server.stop()
    total_cpu = sum(cpu.values())
    worker_cpu = [cpu[p] for p in pids]
    r.update(
        workers=n_workers,
        startup_s=round(server.startup_s + settle_s, 1),
        server_cpu_ms_per_req=round(total_cpu / max(1, r["requests"]) * 1e3, 3),
        worker_cpu_share=[round(c / max(1e-9, sum(worker_cpu)), 2) for c in worker_cpu],
        memory_idle_mib=list(idle.values()),
        memory_mib=list(loaded.values()),
        supervisor_mib=supervisor,
        rss_total_mib=round(sum(m["rss"] for m in loaded.values()) + supervisor.get("rss", 0), 1),
        pss_total_mib=round(sum(m["pss"] for m in loaded.values()) + supervisor.get("pss", 0), 1),
    )
    print(
        f"{n_workers} worker(s): {r['requests_per_s']:,.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
        f"  RSS {[m['rss'] for m in r['memory_mib']]} MiB  PSS total {r['pss_total_mib']} MiB"
        f"  CPU shares {r['worker_cpu_share']}"
    )
    return r


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000, help="vectors in the synthetic index")
    ap.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    ap.add_argument("--concurrency", type=int, default=16, help="keep-alive connections of the client")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    ap.add_argument("--requests", type=int, default=1_000_000, help="at most this many requests a measurement")
    ap.add_argument("--warmup", type=int, default=2_000, help="requests before each measurement")
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    idx, info = ensure_index(args.size, ensure_model(WORK), WORK)
    index_mib = round(sum(f.stat().st_size for f in idx.rglob("*") if f.is_file()) / 2**20, 1)
    runs = [run(int(n), idx, args.size, args) for n in args.workers.split(",")]
    base = runs[0]["requests_per_s"] or 1.0
    rows = [
        [
            r["workers"],
            f"{r['requests_per_s']:,.0f}",
            f"{r['requests_per_s'] / base:.2f}x",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['server_cpu_ms_per_req']:.3f}",
            " / ".join(f"{s:.2f}" for s in r["worker_cpu_share"]),
            " / ".join(f"{m['rss']:.0f}" for m in r["memory_mib"]),
            " / ".join(f"{m['pss']:.0f}" for m in r["memory_mib"]),
            f"{r['rss_total_mib']:,.0f}",
            f"{r['pss_total_mib']:,.0f}",
        ]
        for r in runs
    ]
    header = [
        "workers",
        "req/s",
        "vs 1",
        "p50 ms",
        "p99 ms",
        "server CPU ms/req",
        "CPU share by worker",
        "RSS by worker MiB",
        "PSS by worker MiB",
        "RSS total MiB",
        "PSS total MiB",
    ]
    m = machine(with_torch=False)
    print(f"\n{args.size:,} vectors ({info.get('index_type')}), index files {index_mib} MiB; {describe_machine(m)}")
    print(table(rows, header))
    result = {
        "command": command_line(),
        "machine": m,
        "index": {**info, "files_mib": index_mib},
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "runs": runs,
        "table_markdown": table(rows, header, markdown=True),
    }
    write_json(RESULTS / "workers.json", result)
    return result


if __name__ == "__main__":
    main()
