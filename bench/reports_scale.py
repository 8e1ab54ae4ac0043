"""Near-duplicate report at scale (issue 5): time and peak memory at 10k, 100k and 1M vectors.

    .venv/bin/python bench/reports_scale.py [--sizes 10000 100000 1000000] [--k 16]

For each size, builds (once, cached under --workdir) a real index directory of
synthetic 128-d vectors: a catalog with one row per vector, the exact store, the
search index the indexer would publish for that size (flat up to 100k, HNSW above,
see `indexer.vectors.plan_index`), a manifest and an untrained model of the right
dimension (the report never runs it). The vectors imitate an autoencoder's: a large
common component plus anisotropic noise, and 0.5% of them are seeds of planted
near-duplicate clusters (1 to 4 jittered copies each), so the report has groups to
find and the run can check it found them.

Each report runs in a fresh process (its peak memory is its own): open the engine,
exact duplicates, near-duplicates at every tier by vectors alone (`search.reports.near_duplicates`:
exact kNN up to `search.reports.EXACT_MAX` vectors, the HNSW index above), and the
JSON and CSV written to disk. Reported: wall time per stage, peak RSS, pairs and
groups found, and the recall of the planted pairs.

Prints a table, writes JSON to bench/results/reports_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, table, write_json

REPO = Path(__file__).resolve().parent.parent
DIM = 128
PLANT_FRACTION = 0.005


def make_vectors(n: int, seed: int = 0):
    """(vectors float32 unit length, planted (seed position, copy position) pairs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    common = rng.standard_normal(DIM).astype(np.float32) * 3
    scales = np.geomspace(1.0, 0.05, DIM).astype(np.float32)
    x = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(n, s + 100_000) - s
        x[s : s + m] = common + rng.standard_normal((m, DIM)).astype(np.float32) * scales
    n_seeds = max(1, int(n * PLANT_FRACTION))
    copies = rng.integers(1, 5, n_seeds)
    slots = rng.permutation(n)
    seeds, targets = slots[:n_seeds], slots[n_seeds : n_seeds + int(copies.sum())]
    owner = np.repeat(seeds, copies)
    x[targets] = x[owner] + 0.03 * rng.standard_normal((len(targets), DIM)).astype(np.float32) * scales
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.stack([owner, targets], axis=1)


def build(n: int, workdir: Path) -> Path:
    """The cached index directory for `n` vectors (ids 1..n)."""
    import numpy as np

    from encoder import ModelConfig, create_model, model_id, save_model
    from indexer import Catalog, VectorStore, plan_index
    from indexer.publish import publish

    idx = workdir / f"n{n}"
    if (idx / "manifest.json").exists():
        return idx
    idx.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x, planted = make_vectors(n)
    np.save(idx / "planted.npy", planted + 1)  # as ids
    model = idx / "model"
    save_model(create_model(ModelConfig(image_size=32, channels=(8, 16), latent_dim=DIM)), model)
    mid = model_id(model)
    cat = Catalog.for_directory(idx)
    cat.ensure_model(mid, "conv", {})
    cat.close()
    import sqlite3

    con = sqlite3.connect(idx / "catalog.sqlite")
    rng = np.random.default_rng(1)
    sides = rng.integers(64, 2049, (n, 2))
    rows = (
        (
            i + 1,
            f"set{i // 1000:04d}/img_{i:07d}.jpg",
            int(sides[i, 0] * sides[i, 1] // 4),
            0,
            f"{i:040x}",
            int(sides[i, 0]),
            int(sides[i, 1]),
            "JPEG",
            "ok",
            mid,
            1,
        )
        for i in range(n)
    )
    con.executemany(
        "INSERT INTO images (id, path, size, mtime_ns, content_hash, width, height, format, status, "
        "model_id, vector_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    con.commit()
    con.close()
    store = VectorStore(DIM)
    store.add(np.arange(1, n + 1, dtype=np.int64), x)
    del x
    plan = plan_index(n, DIM)
    t1 = time.perf_counter()
    cat = Catalog.for_directory(idx)
    publish(idx, store, plan, mid, None, catalog=cat)
    cat.close()
    info = {
        "n": n,
        "index_type": plan.index_type,
        "build_s": round(time.perf_counter() - t0, 1),
        "publish_s": round(time.perf_counter() - t1, 1),
    }
    (idx / "build.json").write_text(json.dumps(info))
    return idx


def run_report(index: str, k: int, out_dir: str) -> dict[str, Any]:
    """In the child process: the report on `index`, timed stage by stage."""
    import numpy as np

    from search.engine import Engine
    from search.reports import TIERS, Report, exact_duplicates, near_duplicates, write_report

    t0 = time.perf_counter()
    engine = Engine(index, device="cpu")
    t_open = time.perf_counter() - t0
    t = time.perf_counter()
    exact = exact_duplicates(engine)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    near = near_duplicates(engine, TIERS, k=k, phash=False)  # synthetic vectors: no files to hash
    t_near = time.perf_counter() - t
    rep = Report(index, engine.snapshot().manifest.model_id, engine.catalog.count(), "", exact=exact, near=near)
    t = time.perf_counter()
    sizes = {}
    for fmt in ("json", "csv"):
        p = write_report(rep, Path(out_dir) / f"report.{fmt}")
        sizes[fmt] = p.stat().st_size
    t_write = time.perf_counter() - t
    planted = np.load(Path(index) / "planted.npy")
    where: dict[str, dict[int, int]] = {}
    for tier in TIERS:
        where[tier.name] = {m.id: gi for gi, g in enumerate(near.groups[tier.name]) for m in g.members}
    together = sum(
        1 for a, b in planted if any(w.get(int(a), -1) == w.get(int(b), -2) for w in where.values())
    )  # a planted pair is found when both are in one group at some tier
    return {
        "open_s": round(t_open, 2),
        "exact_s": round(t_exact, 2),
        "near_s": round(t_near, 2),
        "write_s": round(t_write, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "method": near.method,
        "pairs": near.pairs,
        "groups": {t: len(gs) for t, gs in near.groups.items()},
        "planted_pairs": int(len(planted)),
        "planted_pairs_grouped": int(together),
        "output_bytes": sizes,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--k", type=int, default=16, help="neighbours per image")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "reports_scale", help="cached synthetic indexes")
    ap.add_argument("--out", type=Path, default=RESULTS / "reports_scale.json", help="JSON results")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.child:
        index, k, out_dir = args.child
        print(json.dumps(run_report(index, int(k), out_dir)))
        return {}
    results: dict[str, Any] = {"command": command_line(), "machine": machine(), "k": args.k, "runs": []}
    for n in args.sizes:
        t = time.perf_counter()
        idx = build(n, args.workdir)
        print(f"index for {n:,} vectors ready ({time.perf_counter() - t:.0f} s)", flush=True)
        out_dir = args.workdir / f"out-{n}"
        out_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(idx), str(args.k), str(out_dir)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(f"report on {n} vectors failed")
        run = {
            "n": n,
            **json.loads(proc.stdout.strip().splitlines()[-1]),
            **{"index": json.loads((idx / "build.json").read_text())},
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        write_json(args.out, results)
    print(f"\n{describe_machine(results['machine'])}; k={args.k}")
    rows = [
        [
            r["n"],
            r["index"]["index_type"],
            r["method"],
            r["near_s"],
            r["total_s"],
            r["peak_rss_mib"],
            r["pairs"],
            sum(r["groups"].values()),
            f"{r['planted_pairs_grouped']}/{r['planted_pairs']}",
        ]
        for r in results["runs"]
    ]
    print(
        table(
            rows,
            ["vectors", "index", "pairs from", "near-dup s", "total s", "peak MiB", "pairs", "groups", "planted found"],
        )
    )
    return results


if __name__ == "__main__":
    main()
