"""Search latency and throughput (issue 4): a real server on loopback, at 10k, 100k and 1M vectors.

    .venv/bin/python bench/search_latency.py [--sizes 10000,100000,1000000] [--requests 2000] [--seconds 10]

For each size it builds (once, cached under bench/results/search_latency/) an
index directory of synthetic vectors: catalog rows ``synthetic/000123.jpg``,
random L2-normalised float32 vectors of the model's dimension, the search index
``plan_index`` picks (flat up to 100k, HNSW above), and a real model trained on
``data/`` (copied from ``data/.lookalike/model`` when that one has the default
config, else trained once) so uploads run the real encoder.

It then starts ``python -m search serve --index DIR`` in a subprocess and, in
the same run, measures these endpoints of that one server:

- ``healthz``: ``GET /healthz``, the server's own constant JSON answer (an
  ``async def`` route behind the app's middleware);
- ``by-id``: ``GET /images/{id}/similar?k=10`` with random ids, answered by the
  fast lane (search/api/fast_lane.py) from the precomputed neighbour table
  (indexer/neighbours.py) and the published hit rows (indexer/hit_rows.py);
- ``by-id-live``: the same with ``offset=32``, a page past the table, so a live
  search from the stored vector (exact scan or the tuned approximate index);
- ``upload``: ``POST /search`` of a 640x480 JPEG (multipart), k=10;
- with ``--routed``, ``by-id-routed``: by-id again on a second server started
  with ``LOOKALIKE_FAST_LANE=0``, so every request goes through the FastAPI route
  (what the fast lane saves, measured side by side).

Each at concurrency 1 (latency: p50/p99) and 8 (throughput), after a warm-up,
bounded by ``--requests`` or ``--seconds``, whichever comes first. The load
generator (bench/loadgen.py) is a small asyncio HTTP/1.1 keep-alive client in this process (far
cheaper per request than httpx, so it disturbs the server less). It competes
with the server for the same cores; with ``--pin`` (default on when there are
at least 2 cores) every measurement is repeated with the server on core 0 and
the client on core 1. Server CPU time per request (from /proc) is reported
too: it is much steadier than wall-clock figures on a shared machine.

Prints a table, writes JSON to bench/results/search_latency.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from common import REPO, RESULTS, command_line, describe_machine, machine, table, write_json
from loadgen import Server, measure

from indexer.layout import NEIGHBOURS_K

WORK = RESULTS / "search_latency"
DIM = 128
TARGETS = {"by_id_p50_ms_1m": 5.0, "by_id_vs_healthz_throughput": 0.5, "upload_p50_ms": 25.0}


# ---------------------------------------------------------------- the model and the index


def ensure_model(work: Path) -> Path:
    """A default-config model trained on data/: reuse data/.lookalike/model if it is one, else train once."""
    from encoder import ModelConfig, TrainConfig, train
    from encoder.checkpoint import read_config

    dst = work / "model"
    if (dst / "model.safetensors").is_file() and (dst / "config.json").is_file():
        return dst
    src = REPO / "data" / ".lookalike" / "model"
    tmp = work / "model.incoming"
    shutil.rmtree(tmp, ignore_errors=True)
    reuse = False
    if (src / "model.safetensors").is_file():
        try:
            cfg, _ = read_config(src)
            reuse = cfg.to_dict() == ModelConfig().to_dict()
        except Exception:  # a half-written model: train our own
            reuse = False
    if reuse:
        print(f"model: copying {src}")
        tmp.mkdir(parents=True)
        for f in ("model.safetensors", "config.json"):
            shutil.copy2(src / f, tmp / f)
    else:
        print("model: training a default-config model on data/ (once) ...")
        train(REPO / "data", tmp, ModelConfig(), TrainConfig(epochs=10, seed=0), progress=False)
    os.replace(tmp, dst)
    return dst


def retune(idx: Path) -> None:
    """Bring a cached index up to what `publish` does now: tune an approximate index's
    search effort to the recall target (indexes cached before tuning existed keep
    efSearch 96), and write the neighbour table and the hit rows (cached before they
    existed), as `lookalike index` would."""
    from indexer import Catalog, Manifest, VectorStore, read_search_index
    from indexer.hit_rows import read_hit_rows
    from indexer.layout import HIT_ROWS, STORE
    from indexer.publish import republish_derived
    from indexer.vectors import IndexPlan, tune_search

    m = Manifest.read(idx)
    if m is None:
        return
    tune = m.index_type != "flat" and "recall_at_10" not in m.params
    derived = m.neighbours_k != NEIGHBOURS_K or read_hit_rows(idx / HIT_ROWS) is None
    if not tune and not derived:
        return
    store = VectorStore.load(idx / STORE)
    if tune:
        index = read_search_index(idx / m.search_file, m.params)
        plan = tune_search(index, store, IndexPlan(m.index_type, m.params, m.reason))
        m.params, m.reason = plan.params, plan.reason
        m.write(idx)
        print(f"retuned the cached {idx.name}: {plan.reason}", flush=True)
    if derived:
        catalog = Catalog.for_directory(idx)
        m = republish_derived(idx, store, m, neighbours_k=NEIGHBOURS_K, catalog=catalog, progress=True)
        catalog.close()
        print(f"{idx.name}: {m.neighbours}; hit rows written", flush=True)


def ensure_index(n: int, model_dir: Path, work: Path, seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """An index directory of `n` synthetic vectors (built once; a marker file says it is complete)."""
    idx = work / f"index-{n}"
    marker = idx / ".complete.json"
    if marker.is_file():
        retune(idx)
        return idx, json.loads(marker.read_text())

    import numpy as np
    from sqlalchemy import insert

    from encoder import model_id
    from encoder.checkpoint import read_config
    from indexer import Catalog, ImageRecord, VectorStore, plan_index
    from indexer.catalog import utcnow
    from indexer.publish import publish

    shutil.rmtree(idx, ignore_errors=True)
    idx.mkdir(parents=True)
    info: dict[str, Any] = {"n": n}
    t0 = time.perf_counter()
    shutil.copytree(model_dir, idx / "model")
    mid = model_id(idx / "model")
    cfg, _ = read_config(idx / "model")
    dim = cfg.latent_dim

    catalog = Catalog.for_directory(idx)
    catalog.ensure_model(mid, cfg.kind, cfg.to_dict())
    catalog.set_meta("root", str(idx / "root"))  # never read: the synthetic files do not exist
    now = utcnow()
    with catalog.engine.begin() as conn:
        for start in range(1, n + 1, 50_000):
            rows = [
                {
                    "id": i,
                    "path": f"synthetic/{i:07d}.jpg",
                    "size": 50_000 + i % 1000,
                    "mtime_ns": 1_700_000_000_000_000_000 + i,
                    "content_hash": None,
                    "width": 640,
                    "height": 480,
                    "format": "JPEG",
                    "status": "ok",
                    "error": None,
                    "embedded_at": now,
                    "model_id": mid,
                    "duplicate_of": None,
                    "vector_seq": 1,
                }
                for i in range(start, min(n, start + 50_000 - 1) + 1)
            ]
            conn.execute(insert(ImageRecord.__table__), rows)
    catalog.set_meta("store_seq", "1")
    catalog.close()
    info["catalog_s"] = round(time.perf_counter() - t0, 1)

    t1 = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = VectorStore(dim)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        vecs = rng.standard_normal((m, dim), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.add(np.arange(start + 1, start + m + 1, dtype=np.int64), vecs)
    plan = plan_index(n, dim)
    catalog = Catalog.for_directory(idx)
    manifest = publish(idx, store, plan, mid, None, catalog=catalog)
    catalog.close()
    info.update(
        publish_s=round(time.perf_counter() - t1, 1),
        index_type=manifest.index_type,
        params=manifest.params,
        dim=dim,
        model_id=mid,
        bytes_per_vector=manifest.bytes_per_vector,
    )
    marker.write_text(json.dumps(info, indent=2))
    print(f"index {n:,}: built in {time.perf_counter() - t0:.0f} s ({manifest.index_type} {manifest.params})")
    return idx, info


def make_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-like 640x480 JPEG: gradient, blurred shapes, noise; quality 85."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx + yy) / (width + height)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = Image.fromarray(np.clip(c0 + (c1 - c0) * t[..., None], 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(30, 300)), int(rng.integers(30, 240))
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (height, width, 1))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


# ---------------------------------------------------------------- requests


def request_maker(kind: str, n_vectors: int, jpeg: bytes, seed: int = 1):
    """A function returning the bytes of the next request of `kind` (by-id picks a random id each time)."""
    rng = random.Random(seed)
    head = "Host: 127.0.0.1\r\nUser-Agent: lookalike-bench\r\n"
    if kind in ("healthz", "trivial-async"):
        req = f"GET /healthz HTTP/1.1\r\n{head}\r\n".encode()
        return lambda: req
    if kind == "trivial-sync":
        req = f"GET /healthz-sync HTTP/1.1\r\n{head}\r\n".encode()
        return lambda: req
    if kind in ("by-id", "by-id-routed"):
        return lambda: f"GET /images/{rng.randint(1, n_vectors)}/similar?k=10 HTTP/1.1\r\n{head}\r\n".encode()
    if kind == "by-id-live":  # a page past the precomputed neighbours: a live search from the stored vector
        off = NEIGHBOURS_K
        return lambda: (
            f"GET /images/{rng.randint(1, n_vectors)}/similar?k=10&offset={off} HTTP/1.1\r\n{head}\r\n".encode()
        )
    if kind == "upload":
        boundary = "lookalikebenchboundary7d1f"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="query.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + jpeg
            + f"\r\n--{boundary}--\r\n".encode()
        )
        req = (
            f"POST /search?k=10 HTTP/1.1\r\n{head}Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return lambda: req
    raise ValueError(kind)


# ---------------------------------------------------------------- the run

KINDS = ("healthz", "by-id", "by-id-live", "upload")
TRIVIAL_KINDS = ("trivial-async", "trivial-sync")  # served by bench/trivial_app.py, in the same layout
#: With --routed: by-id again, on a second server with the fast lane off (every request through the route).
ROUTED_KINDS = ("by-id-routed",)


def given_index(spec: str) -> tuple[int, Path]:
    n, _, d = spec.partition("=")
    return int(n.replace("_", "")), Path(d).resolve()


def bench_size(n: int, args: argparse.Namespace, model_dir: Path, jpeg: bytes, env: dict[str, str]) -> dict[str, Any]:
    from indexer import Manifest

    given = dict(given_index(spec) for spec in args.index_dir)
    if n in given:  # a prepared index (ids 1..n), e.g. bench/reports_scale.py's autoencoder-like vectors
        idx = given[n]
        retune(idx)
        m = Manifest.read(idx)
        info = {"index_type": m.index_type, "params": m.params, "dim": m.dim, "dir": str(idx), "given": True}
    else:
        idx, info = ensure_index(n, model_dir, WORK)
    out: dict[str, Any] = {"n": n, "index": info, "runs": []}
    layouts: list[tuple[str, str | None, set[int] | None]] = [("shared", None, None)]
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) >= 2:
        layouts.append((f"pinned s:{cores[0]} c:{cores[1]}", str(cores[0]), {cores[1]}))
    servers: list[tuple[Path | None, tuple[str, ...], dict[str, str], str]] = [
        (idx, KINDS, env, "lookalike serve"),
        (None, TRIVIAL_KINDS, env, "trivial app"),
    ]
    if args.routed:
        servers.append((idx, ROUTED_KINDS, {**env, "LOOKALIKE_FAST_LANE": "0"}, "lookalike serve, fast lane off"))
    for layout, server_cores, client_cores in layouts:
        for server_dir, kinds, server_env, name in servers:
            server = Server(server_dir, WORK, server_cores, server_env)
            try:
                print(f"{n:,} vectors ({info['index_type']}), {layout}: {name} up in {server.startup_s} s")
                for conc in args.concurrency:
                    for kind in kinds:
                        make = request_maker(kind, n, jpeg)
                        reqs = args.requests if kind != "upload" else args.upload_requests
                        r = measure(server, make, conc, reqs, args.seconds, args.warmup, client_cores)
                        r.update(kind=kind, layout=layout)
                        out["runs"].append(r)
                        print(
                            f"  {kind:<13} c={conc}: p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                            f"{r['requests_per_s']:,.0f} req/s  server {r['server_cpu_ms_per_req']:.2f} ms CPU/req"
                        )
                if kinds is KINDS:
                    out.setdefault("server_rss_mib", {})[layout] = server.rss_mib()
                    out.setdefault("server_command", server.command)
            finally:
                server.stop()
    return out


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []

    def run(res, kind, conc, layout="shared"):
        want = (kind, conc, layout)
        return next((r for r in res["runs"] if (r["kind"], r["concurrency"], r["layout"]) == want), None)

    for res in results:
        n = res["n"]
        layouts = sorted({r["layout"] for r in res["runs"]})
        for layout in layouts:
            by1 = run(res, "by-id", 1, layout)
            if by1 and n >= 1_000_000:
                checks.append(
                    {
                        "n": n,
                        "layout": layout,
                        "target": "by-id p50 <= 5 ms at 1M (c=1)",
                        "value": by1["p50_ms"],
                        "met": by1["p50_ms"] <= TARGETS["by_id_p50_ms_1m"],
                    }
                )
            conc = max(r["concurrency"] for r in res["runs"])
            by8 = run(res, "by-id", conc, layout)
            for ceiling in ("trivial-async", "trivial-sync", "healthz"):
                top = run(res, ceiling, conc, layout)
                if by8 and top and top["requests_per_s"]:
                    ratio = round(by8["requests_per_s"] / top["requests_per_s"], 3)
                    checks.append(
                        {
                            "n": n,
                            "layout": layout,
                            "target": f"by-id req/s >= 0.5 x {ceiling} (c={conc})",
                            "value": ratio,
                            "met": ratio >= TARGETS["by_id_vs_healthz_throughput"],
                        }
                    )
            up1 = run(res, "upload", 1, layout)
            if up1:
                checks.append(
                    {
                        "n": n,
                        "layout": layout,
                        "target": "upload p50 <= 25 ms (c=1)",
                        "value": up1["p50_ms"],
                        "met": up1["p50_ms"] <= TARGETS["upload_p50_ms"],
                    }
                )
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="Comma-separated vector counts.")
    ap.add_argument("--requests", type=int, default=2000, help="Requests per measurement (healthz, by-id).")
    ap.add_argument("--upload-requests", type=int, default=1000, help="Requests per upload measurement.")
    ap.add_argument("--seconds", type=float, default=10.0, help="Time cap per measurement.")
    ap.add_argument("--warmup", type=int, default=200, help="Warm-up requests before each measurement.")
    ap.add_argument("--concurrency", default="1,8", help="Comma-separated concurrency levels.")
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also measure with server and client pinned to different cores.",
    )
    ap.add_argument(
        "--routed",
        action="store_true",
        help="Also measure by-id on a server with the fast lane off (LOOKALIKE_FAST_LANE=0).",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra environment for the server (e.g. OMP_NUM_THREADS=1); repeatable.",
    )
    ap.add_argument(
        "--index-dir",
        action="append",
        default=[],
        metavar="N=DIR",
        help="Measure size N on this prepared index instead of random vectors; repeatable.",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "search_latency.json")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    env = dict(kv.split("=", 1) for kv in args.env)

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model(WORK)
    jpeg = make_jpeg()
    info = machine()
    print(describe_machine(info))
    results = [bench_size(n, args, model_dir, jpeg, env) for n in sizes]
    checks = check_targets(results)

    header = [
        "vectors",
        "index",
        "layout",
        "endpoint",
        "conc",
        "requests",
        "p50 ms",
        "p99 ms",
        "req/s",
        "server CPU ms/req",
    ]
    rows = [
        [
            res["n"],
            res["index"]["index_type"],
            r["layout"],
            r["kind"],
            r["concurrency"],
            r["requests"],
            r["p50_ms"],
            r["p99_ms"],
            r["requests_per_s"],
            r["server_cpu_ms_per_req"],
        ]
        for res in results
        for r in res["runs"]
    ]
    print()
    print(table(rows, header))
    print()
    print(
        table(
            [[c["n"], c["layout"], c["target"], c["value"], "yes" if c["met"] else "NO"] for c in checks],
            ["vectors", "layout", "target", "value", "met"],
        )
    )
    path = write_json(
        args.out,
        {
            "command": command_line(),
            "machine": info,
            "jpeg_bytes": len(jpeg),
            "server_env": env,
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "results": results,
            "targets": checks,
            "table": {"header": header, "rows": rows},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
