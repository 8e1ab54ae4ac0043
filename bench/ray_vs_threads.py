"""Indexing on Ray on this machine against the local thread path (issue 17, item 6).

    .venv/bin/python bench/ray_vs_threads.py [--n 3000] [--model DIR] [--repeats 1]

Generates (once, cached under --workdir) a folder of 640x480 JPEGs and a
default-config model (the same corpus and model as bench/index_speed.py), then,
in one run, side by side: `build_index` with this machine's decoding threads,
then with Ray started on this machine (`ray.init` timed on its own), then with
the threads again, so a noisy machine shows. For each run: images/s end to end
(walk, hash, decode, embed, catalog, publish) and of the decode + embed stage
alone (the distributor's part); Ray's overhead as the ratio of the threads'
rate to Ray's; Ray's start-up as the time of `ray.init` plus the time from the
start of its first run to its first result (actors starting, the model loaded).

Prints a table, writes JSON under bench/results/ray_vs_threads/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, rate, table, write_json
from index_speed import ensure_corpus, ensure_model, warm_page_cache

OUT = RESULTS / "ray_vs_threads"


class TimedDistributor:
    """Wraps a distributor: the seconds from its start to its last result, and to its first."""

    def __init__(self, inner: Any, spool: bool = True) -> None:
        self.inner, self.name = inner, inner.name
        self.spool = spool  # False: results in memory, not through shard files
        self.stage_s = self.first_s = 0.0

    def embed(self, encoder: Any, shards: Sequence[Any], max_pixels: int, spool: Any = None) -> Iterator[Any]:
        t0 = time.perf_counter()
        results = self.inner.embed(encoder, shards, max_pixels, spool if self.spool else None)
        for i, result in enumerate(results):
            if i == 0:
                self.first_s = time.perf_counter() - t0
            yield result
        self.stage_s = time.perf_counter() - t0


def one_run(
    name: str, distributor: Any, folder: Path, index_dir: Path, model_dir: Path, batch: int, spool: bool = True
) -> dict:
    from indexer import build_index
    from indexer.distribute import use_distributor

    shutil.rmtree(index_dir, ignore_errors=True)
    timed = TimedDistributor(distributor, spool)
    print(f"{name} ...", flush=True)
    t0 = time.perf_counter()
    with use_distributor(timed):
        summary = build_index(folder, index_dir, model_dir, batch_size=batch, progress=False, neighbours=0)
    wall = time.perf_counter() - t0
    n = summary.embedded
    return {
        "name": name,
        "embedded": n,
        "failed": len(summary.failed),
        "wall_s": round(wall, 2),
        "stage_s": round(timed.stage_s, 2),
        "first_result_s": round(timed.first_s, 2),
        "images_per_second": rate(n, wall),
        "stage_images_per_second": rate(n, timed.stage_s),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="JPEGs in the generated folder (default 3000)")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "index_speed", help="corpus and model cache")
    ap.add_argument("--model", type=Path, help="a trained model directory (default: train one, cached in --workdir)")
    ap.add_argument("--batch-size", type=int, default=256, help="images a shard (default 256)")
    ap.add_argument("--object-store-mib", type=int, default=1024, help="Ray's object store (default 1024 MiB)")
    ap.add_argument("--repeats", type=int, default=1, help="Ray runs after the first (default 1)")
    ap.add_argument(
        "--variants",
        action="store_true",
        help="after each Ray run, one with results in memory (no shard files) and one unordered",
    )
    ap.add_argument("--out", type=Path, default=OUT / "ray_vs_threads.json", help="JSON results")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import ray

    from encoder.decoding import default_workers
    from encoder.image_files import find_images
    from indexer.distribute import ThreadDistributor
    from indexer.ray_embed import RayDistributor

    workdir = args.workdir.resolve()
    folder = workdir / f"jpegs-{args.n}"
    ensure_corpus(folder, args.n, default_workers())
    paths = find_images(folder)
    warm_page_cache(paths)
    model_dir = args.model.resolve() if args.model else workdir / "model-default"
    if not args.model:
        ensure_model(model_dir, folder, 512, 3, None)
    info = machine()
    print(f"machine: {describe_machine(info)}; {len(paths)} JPEGs", flush=True)
    index_dir = OUT / "index"

    runs = [one_run("threads", ThreadDistributor(), folder, index_dir, model_dir, args.batch_size)]
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, object_store_memory=args.object_store_mib * 2**20, logging_level="WARNING")
    init_s = time.perf_counter() - t0
    try:
        for i in range(1 + args.repeats):
            runs.append(one_run(f"ray local #{i + 1}", RayDistributor(), folder, index_dir, model_dir, args.batch_size))
            if args.variants:
                # The product's Ray path (shard files, results in shard order) against its two parts undone.
                for label, dist, spool in (
                    ("in memory", RayDistributor(), False),
                    ("unordered", RayDistributor(ordered=False), True),
                ):
                    name = f"ray {label} #{i + 1}"
                    runs.append(one_run(name, dist, folder, index_dir, model_dir, args.batch_size, spool))
    finally:
        ray.shutdown()
    runs.append(one_run("threads again", ThreadDistributor(), folder, index_dir, model_dir, args.batch_size))
    shutil.rmtree(index_dir, ignore_errors=True)

    threads = [r for r in runs if r["name"].startswith("threads")]
    rays = [r for r in runs if r["name"].startswith("ray local")]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    overhead = {
        "end_to_end": round(mean(threads, "images_per_second") / mean(rays, "images_per_second"), 2),
        "stage": round(mean(threads, "stage_images_per_second") / mean(rays, "stage_images_per_second"), 2),
    }
    startup = {"ray_init_s": round(init_s, 2), "first_result_s": rays[0]["first_result_s"]}
    startup["total_s"] = round(startup["ray_init_s"] + startup["first_result_s"], 2)
    header = ["run", "embedded", "wall s", "images/s", "decode+embed s", "stage images/s", "first result s"]
    rows = [
        [
            r["name"],
            r["embedded"],
            r["wall_s"],
            r["images_per_second"],
            r["stage_s"],
            r["stage_images_per_second"],
            r["first_result_s"],
        ]
        for r in runs
    ]
    print(table(rows, header))
    print(
        f"Ray's overhead (threads' images/s / Ray's): {overhead['end_to_end']}x end to end, "
        f"{overhead['stage']}x for decode + embed; start-up: ray.init {startup['ray_init_s']} s "
        f"+ first result {startup['first_result_s']} s = {startup['total_s']} s"
    )
    variants = {}
    if args.variants:  # mean images/s of each kind of Ray run after the first (which pays the start-up)
        for kind in ("ray local", "ray in memory", "ray unordered"):
            rs = [r for r in runs if r["name"].startswith(kind) and not r["name"].endswith("#1")]
            if rs:
                variants[kind] = round(mean(rs, "images_per_second"), 1)
        print("mean images/s after the first round: " + ", ".join(f"{k} {v}" for k, v in variants.items()))
    results = {
        "command": command_line(),
        "machine": info,
        "corpus": {"images": len(paths), "folder": str(folder)},
        "model": str(model_dir),
        "batch_size": args.batch_size,
        "ray_version": ray.__version__,
        "runs": runs,
        "overhead_ratio": overhead,
        "startup": startup,
        "variants_images_per_second": variants,
    }
    write_json(args.out, results)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
