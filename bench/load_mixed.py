"""A mixed load on a real server with a re-index published in the middle (issue 14).

    .venv/bin/python bench/load_mixed.py [--clients 100] [--seconds 300] [--reindex-at 0.5]

Builds an index of a copy of the sample corpus (data/) with a small model trained here
(cached under --workdir), starts `lookalike serve` on it (bench/loadgen.py's Server), and
drives it from `--clients` keep-alive connections at once with a mix of requests: by-id
neighbours (60%), uploads of a sample image (20%) and thumbnails (20%). Part-way through
(`--reindex-at` of the run), new images are added to the folder and `lookalike index` runs
in a subprocess, so the server switches to a new generation under load. A connection the
server closes, a reset, a malformed answer or any status but 200 is an error; the client
reconnects and goes on. Reports p50/p99 per endpoint, errors, and the server's RSS.

Prints a table, writes JSON to bench/results/load_mixed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, command_line, describe_machine, machine, table, write_json
from loadgen import Server, _read_response, _run_loop, percentile

ENDPOINTS = ("by-id", "upload", "thumbnail")
MIX = (0.6, 0.2, 0.2)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """(folder, index) of a copy of data/ indexed with a small model (trained once, cached)."""
    sys.path.insert(0, str(REPO))
    from encoder import ModelConfig, TrainConfig, train
    from indexer import build_index

    folder = workdir / "images"
    model = workdir / "model"
    if not (model / "model.safetensors").exists():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(REPO / "data", folder, ignore=shutil.ignore_patterns(".lookalike"))
        cfg = ModelConfig(image_size=32, channels=(8, 16, 32), latent_dim=16)
        train(folder, model, cfg, TrainConfig(epochs=3, batch_size=16, seed=0), progress=False)
    shutil.rmtree(folder / "added", ignore_errors=True)  # the previous run's re-index
    build_index(folder, model_dir=model, progress=False)
    return folder, folder / ".lookalike"


def _request(kind: str, ids: list[int], upload: bytes) -> bytes:
    if kind == "by-id":
        return f"GET /images/{random.choice(ids)}/similar?k=10 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    if kind == "thumbnail":
        size = random.choice((128, 256))
        return f"GET /images/{random.choice(ids)}/thumbnail?size={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + upload + b"\r\n--b--\r\n"
    )
    head = (
        "POST /search?k=10 HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _drive(port: int, clients: int, seconds: float, ids: list[int], upload: bytes, reindex) -> dict[str, Any]:
    lat: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    errors: dict[str, list[str]] = {k: [] for k in ENDPOINTS}
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def client(n: int) -> None:
        rng = random.Random(n)
        conn = None
        while time.perf_counter() < deadline:
            kind = rng.choices(ENDPOINTS, MIX)[0]
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = conn
                start = time.perf_counter()
                writer.write(_request(kind, ids, upload))
                status, body = await asyncio.wait_for(_read_response(reader), 30)
                lat[kind].append(time.perf_counter() - start)
                if status != 200:
                    errors[kind].append(f"{status} {body[:120]!r}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError, ValueError) as exc:
                errors[kind].append(f"{type(exc).__name__}: {exc}"[:200])
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client(n) for n in range(clients)), reindex())
    return {"latencies": lat, "errors": errors, "elapsed": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--reindex-at", type=float, default=0.5, help="fraction of the run at which to re-index")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "load_mixed")
    ap.add_argument("--out", type=Path, default=RESULTS / "load_mixed.json")
    args = ap.parse_args(argv)
    print(describe_machine(machine()))
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, index = prepare(args.workdir)
    sys.path.insert(0, str(REPO))
    from search.engine import Engine

    eng = Engine(index, device="cpu")
    ids = eng.snapshot().vectors.ids().tolist()
    eng.close()
    upload = sorted((REPO / "data").rglob("*.png"))[0].read_bytes()
    server = Server(index, args.workdir, env={"LOOKALIKE_MAX_CONNECTIONS": str(args.clients * 2)})
    reindex_info: dict[str, Any] = {}
    rss: list[float] = []

    async def reindex() -> None:
        await asyncio.sleep(args.seconds * args.reindex_at)
        added = folder / "added"
        added.mkdir(exist_ok=True)
        for n, src in enumerate(sorted((REPO / "data").rglob("*.png"))[:10]):
            shutil.copy(src, added / f"again_{n}{src.suffix}")
            with open(added / f"again_{n}{src.suffix}", "ab") as fh:
                fh.write(b"\0" * (n + 1))  # other bytes: new images, not exact copies
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "search",
            "index",
            str(folder),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reindex_info["exit_code"] = await proc.wait()
        reindex_info["seconds"] = round(time.perf_counter() - t, 1)
        reindex_info["at_s"] = round(args.seconds * args.reindex_at, 1)

    async def watch_rss() -> None:
        while True:
            rss.append(server.rss_mib())
            await asyncio.sleep(1)

    async def run() -> dict[str, Any]:
        watcher = asyncio.ensure_future(watch_rss())
        try:
            return await _drive(server.port, args.clients, args.seconds, ids, upload, reindex)
        finally:
            watcher.cancel()

    try:
        res = _run_loop(run())
    finally:
        server.stop()
    rows, per = [], {}
    for kind in ENDPOINTS:
        lat = sorted(res["latencies"][kind])
        errs = res["errors"][kind]
        per[kind] = {
            "requests": len(lat),
            "errors": len(errs),
            "first_errors": errs[:5],
            "p50_ms": round(percentile(lat, 50) * 1e3, 2),
            "p99_ms": round(percentile(lat, 99) * 1e3, 2),
        }
        rows.append([kind, len(lat), len(errs), per[kind]["p50_ms"], per[kind]["p99_ms"]])
    print(table(rows, ["endpoint", "requests", "errors", "p50 ms", "p99 ms"]))
    total_errors = sum(p["errors"] for p in per.values())
    print(
        f"{args.clients} clients, {res['elapsed']:.0f} s, re-index {reindex_info}, errors {total_errors}, "
        f"server RSS {min(rss):.0f}-{max(rss):.0f} MiB"
    )
    result = {
        "command": command_line(),
        "machine": machine(),
        "clients": args.clients,
        "seconds": round(res["elapsed"], 1),
        "reindex": reindex_info,
        "endpoints": per,
        "errors": total_errors,
        "server_rss_mib": {"min": min(rss), "max": max(rss)} if rss else {},
    }
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
