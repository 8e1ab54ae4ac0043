"""Issue 14, item 9: where "Server disconnected without sending a response" comes from.

    .venv/bin/python bench/keepalive_race.py [--clients 64] [--rounds 12] [--keep-alive 5,10]

An HTTP/1.1 client that reuses a kept-alive connection races the server's idle timeout:
if the client sends on a connection the server is closing at that moment, the request is
lost and httpx raises ``RemoteProtocolError: Server disconnected without sending a
response``. httpx keeps idle connections for 5 s (``keepalive_expiry``), which is exactly
uvicorn's default ``timeout_keep_alive`` and was ours, so a client that pauses ~5 s between
requests on a connection (as the probe's clients did while the re-index slowed answers)
walks into the race.

This script provokes it on purpose: `--clients` threads, each with its own httpx client
(default limits), make a by-id request, pause just under 5 s (uniform 4.985-5.000 s), and
repeat `--rounds` times, against a real `lookalike serve` with each `--keep-alive` value
(server seconds). No index switch happens. Prints the errors per setting and writes JSON.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the dev extra's httpx (same API, same 5 s keepalive_expiry)
from common import RESULTS, command_line, describe_machine, machine, table, write_json
from load_mixed import prepare
from loadgen import Server

PAUSE = (4.985, 5.00)  # just under httpx's 5 s keepalive_expiry: the client still reuses


def _client(port: int, ids: list[int], rounds: int, seed: int, out: dict[str, int], lock: threading.Lock) -> None:
    rng = random.Random(seed)
    counts = {"ok": 0, "disconnected": 0, "other": 0}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for n in range(rounds):
            try:
                r = client.get(f"/images/{rng.choice(ids)}/similar", params={"k": 5})
                counts["ok" if r.status_code == 200 else "other"] += 1
            except httpx.RemoteProtocolError:
                counts["disconnected"] += 1
            except httpx.HTTPError:
                counts["other"] += 1
            if n + 1 < rounds:
                time.sleep(rng.uniform(*PAUSE))
    with lock:
        for k, v in counts.items():
            out[k] += v


def run(index: Path, keep_alive: float, clients: int, rounds: int, log_dir: Path) -> dict[str, Any]:
    server = Server(index, log_dir, env={"LOOKALIKE_KEEP_ALIVE_S": str(keep_alive)})
    try:
        page = httpx.get(f"http://127.0.0.1:{server.port}/images", params={"limit": 50}).json()
        ids = [row["id"] for row in page["images"]]
        out = {"ok": 0, "disconnected": 0, "other": 0}
        lock = threading.Lock()
        threads = [
            threading.Thread(target=_client, args=(server.port, ids, rounds, s, out, lock)) for s in range(clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
            time.sleep(PAUSE[1] / clients)  # spread the clients over one pause
        for t in threads:
            t.join()
        return {"keep_alive_s": keep_alive, "requests": sum(out.values()), **out, "seconds": time.perf_counter() - t0}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--keep-alive", default="5,10", help="server keep-alive seconds to compare, comma list")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "load_mixed", help="index (shared with load_mixed)")
    ap.add_argument("--out", type=Path, default=RESULTS / "keepalive_race.json")
    args = ap.parse_args(argv)
    _, index = prepare(args.workdir)
    info = machine()
    print(describe_machine(info), flush=True)
    rows = []
    for ka in [float(x) for x in args.keep_alive.split(",") if x.strip()]:
        r = run(index, ka, args.clients, args.rounds, args.workdir)
        print(f"  server keep-alive {ka:g} s: {r['disconnected']} disconnected of {r['requests']}", flush=True)
        rows.append(r)
    print(
        table(
            [[r["keep_alive_s"], 5.0, r["requests"], r["ok"], r["disconnected"], r["other"]] for r in rows],
            ["server keep-alive (s)", "client keepalive_expiry (s)", "requests", "ok", "disconnected", "other"],
        )
    )
    result = {"command": command_line(), "machine": info, "pause_s": PAUSE, "runs": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
