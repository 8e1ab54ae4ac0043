"""Indexing speed (issue 3): `indexer.build_index` against a plain Pillow loop, stage by stage.

    .venv/bin/python bench/index_speed.py [--n 3000] [--model DIR] [--device cuda]

Generates (once, cached under --workdir) a folder of 640x480 JPEGs, trains a
small model with the default ModelConfig (once, cached) unless --model is
given, then measures in one run:

- baseline: a plain single-process loop (Pillow open -> RGB -> resize to the
  model input), run before and after the rest so a noisy machine shows;
- decode only: `encoder.decoding.decode_many` in one process and in workers;
- hash only: `indexer.catalog.content_hash`, one thread;
- embed only: `Encoder.embed_pixels` on already decoded pixels;
- end to end: `build_index` on a fresh index (in a fresh process, so its peak
  memory is its own), with where its wall time went; then the no-change
  second run;
- vector memory: bytes per vector of each index type over synthetic vectors.

Prints a table, writes JSON to bench/results/index_speed.json.

Top-level imports stay light (stdlib + bench/common.py): decode workers are
started with ``spawn`` and re-import this file.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, PeakTreeRSS, command_line, describe_machine, machine, max_rss_mib, rate, table, write_json

WIDTH, HEIGHT = 640, 480
PER_FOLDER = 500  # images per sub-folder of the generated corpus
TARGET_RATIO = 2.5


# ---------------------------------------------------------------- the corpus


def _make_image(args: tuple[str, int]) -> None:
    """One 640x480 JPEG: a gradient, blurred random shapes, sensor-like noise; quality 85."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    path, seed = args
    rng = np.random.default_rng(seed)
    # background: a linear gradient between two colours at a random angle
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / (WIDTH + HEIGHT) + 0.5
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    bg = c0 + (c1 - c0) * t[..., None]
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(-80, WIDTH)), int(rng.integers(-80, HEIGHT))
        w, h = int(rng.integers(20, 320)), int(rng.integers(20, 260))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            pts = [(int(x0 + rng.integers(0, w)), int(y0 + rng.integers(0, h))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 3.0))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), (HEIGHT, WIDTH, 1))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(path, "JPEG", quality=85)


def ensure_corpus(folder: Path, n: int, workers: int) -> float:
    """Generate `n` JPEGs into `folder` unless a complete set is already there; returns seconds spent."""
    marker = folder / ".complete"  # hidden: the indexer's walk skips it
    if marker.exists() and marker.read_text().strip() == str(n):
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for i in range(n):
        sub = folder / f"set{i // PER_FOLDER:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        jobs.append((str(sub / f"img_{i:05d}.jpg"), i))
    t0 = time.perf_counter()
    print(f"generating {n} JPEGs of {WIDTH}x{HEIGHT} into {folder} ...", flush=True)
    with mp.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_make_image, jobs, chunksize=16):
            pass
    marker.write_text(str(n))
    return time.perf_counter() - t0


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once so no measurement pays for the disk (and the first one is not unfairly slow)."""
    total = 0
    for p in paths:
        total += len(p.read_bytes())
    return total


# ---------------------------------------------------------------- the model


def ensure_model(model_dir: Path, folder: Path, images: int, epochs: int, device: str | None) -> float:
    """Train the default ModelConfig on the first `images` files, once; returns seconds spent."""
    from encoder import ModelConfig, TrainConfig, train
    from encoder.checkpoint import CONFIG, WEIGHTS

    if (model_dir / WEIGHTS).is_file() and (model_dir / CONFIG).is_file():
        return 0.0
    print(f"training a default-config model on {images} images ({epochs} epochs) into {model_dir} ...", flush=True)
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=epochs, max_images=images, device=device)
    train(folder, model_dir, ModelConfig(), cfg, progress=False)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- stages


def plain_loop(paths: list[Path], size: int) -> float:
    """The baseline: one process, Pillow open -> RGB -> resize, no draft mode. Returns seconds."""
    import numpy as np
    from PIL import Image

    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            np.asarray(im.convert("RGB").resize((size, size)))
    return time.perf_counter() - t0


def decode_only(paths: list[Path], size: int, workers: int, backend: str | None = None):
    """decode_many over every path; returns (seconds, seconds to the first image, pixels (N, S, S, 3))."""
    import numpy as np

    from encoder.decoding import decode_many

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    first = None
    for d in decode_many(paths, size, workers=workers, backend=backend):
        if first is None:
            first = time.perf_counter() - t0
        if d.pixels is None:
            raise RuntimeError(f"{d.path}: {d.error}")
        out[d.index] = d.pixels
    return time.perf_counter() - t0, first or 0.0, out


def hash_only(paths: list[Path]) -> float:
    from indexer.catalog import content_hash

    t0 = time.perf_counter()
    for p in paths:
        content_hash(p)
    return time.perf_counter() - t0


def embed_only(model_dir: Path, pixels, device: str | None, batch: int) -> tuple[float, str]:
    """Encoder.embed_pixels over `pixels` in build-sized batches (after one warm-up batch); returns seconds."""
    from encoder import Encoder

    enc = Encoder(model_dir, device=device)
    enc.embed_pixels(pixels[:batch])  # warm-up: allocator, cuDNN autotuning, lazy init
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch):
        enc.embed_pixels(pixels[s : s + batch])
    return time.perf_counter() - t0, str(enc.device)


# ---------------------------------------------------------------- end to end, in a fresh process


class _Breakdown:
    """Wraps build internals to see where a run's wall time goes (a few perf_counter calls per batch)."""

    def __init__(self) -> None:
        self.t_start = 0.0
        self.t_decode_start: float | None = None
        self.wait_decode = 0.0
        self.embed = 0.0
        self.ingest = 0.0
        self.publish = 0.0
        self.dup_links = 0.0
        self.save_store = 0.0

    def install(self) -> None:
        import encoder.decoding as decoding
        import indexer.build as b
        import indexer.distribute as distribute
        import indexer.embed as embed
        from encoder.inference import Encoder
        from indexer.catalog import Catalog
        from indexer.run import IndexRun

        def timed(owner, name: str, attr: str) -> None:
            fn = getattr(owner, name)

            def wrapper(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    setattr(self, attr, getattr(self, attr) + time.perf_counter() - t0)

            setattr(owner, name, wrapper)

        orig_decode_many = decoding.decode_many  # what decode_batches calls

        def decode_many(*a, **kw):
            self.t_decode_start = time.perf_counter()
            it = orig_decode_many(*a, **kw)
            while True:
                t0 = time.perf_counter()
                try:
                    d = next(it)
                except StopIteration:
                    self.wait_decode += time.perf_counter() - t0
                    return
                self.wait_decode += time.perf_counter() - t0
                yield d

        decoding.decode_many = decode_many
        distribute.decode_many = decode_many  # the local distributor imported it by name
        timed(Encoder, "embed_pixels", "embed")
        timed(embed, "_ingest", "ingest")
        timed(b, "publish", "publish")
        timed(Catalog, "refresh_duplicate_links", "dup_links")
        timed(IndexRun, "save_store", "save_store")

    def report(self, wall: float) -> dict[str, float]:
        before = (self.t_decode_start - self.t_start) if self.t_decode_start else 0.0
        # The driver's own time, in order; embedding may run in threads beside it
        # (indexer.distribute.default_embedders), so it is reported apart, summed over them.
        parts = {
            "setup_walk_hash_classify_s": before,
            "waiting_for_decode_s": self.wait_decode,
            "catalog_and_store_s": self.ingest,
            "store_saves_s": self.save_store,
            "publish_s": self.publish,
            "duplicate_links_s": self.dup_links,
        }
        parts["embedding_and_other_s"] = wall - sum(parts.values())
        parts["embed_threads_busy_s"] = self.embed
        return {k: round(v, 3) for k, v in parts.items()}


def _build_child(conn, folder: str, index_dir: str, model_dir: str, opts: dict[str, Any]) -> None:
    """Runs in a fresh process: first build, its peak memory, then the no-change second build."""
    result: dict[str, Any] = {}
    try:
        import torch

        if opts.get("torch_threads"):
            torch.set_num_threads(opts["torch_threads"])
        result["torch_threads"] = torch.get_num_threads()
        from indexer import build_index
        from indexer.distribute import ThreadDistributor, use_distributor

        bd = _Breakdown()
        bd.install()
        kw = dict(progress=False, device=opts.get("device"), workers=opts.get("workers"))
        if opts.get("batch_size"):
            kw["batch_size"] = opts["batch_size"]
        distributor = (
            ThreadDistributor(opts.get("workers"), embedders=opts["embedders"]) if opts.get("embedders") else None
        )
        with PeakTreeRSS() as peak, use_distributor(distributor):
            bd.t_start = time.perf_counter()
            first = build_index(folder, index_dir, model_dir, **kw)
            wall = time.perf_counter() - bd.t_start
        result["first"] = {"wall_s": wall, "summary": first.as_dict(), "breakdown": bd.report(wall)}
        result["first_memory"] = {**max_rss_mib(), "peak_tree_mib": peak.peak_mib}
        t0 = time.perf_counter()
        second = build_index(folder, index_dir, model_dir, **kw)
        result["second"] = {"wall_s": time.perf_counter() - t0, "summary": second.as_dict()}
    except BaseException as exc:  # report, never hang the parent
        import traceback

        result["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    conn.send(result)
    conn.close()


def end_to_end(folder: Path, index_dir: Path, model_dir: Path, opts: dict[str, Any]) -> dict[str, Any]:
    shutil.rmtree(index_dir, ignore_errors=True)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_build_child, args=(child, str(folder), str(index_dir), str(model_dir), opts))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    if "error" in result:
        raise RuntimeError("build_index failed in the child process:\n" + result["error"])
    return result


# ---------------------------------------------------------------- vector memory


def vector_memory(n: int, dim: int, seed: int = 0) -> list[dict[str, Any]]:
    """Bytes per vector of each index type, from the file `publish` writes for `n` unit vectors."""
    import numpy as np

    from indexer.publish import publish
    from indexer.vectors import VectorStore, plan_index

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    rows = []
    for kind in ("flat", "hnsw", "ivf", "ivfpq"):
        with tempfile.TemporaryDirectory() as tmp:
            store = VectorStore(dim)
            store.add(ids, vecs)
            plan = plan_index(n, dim, kind)
            t0 = time.perf_counter()
            manifest = publish(Path(tmp), store, plan, "bench", None)
            seconds = time.perf_counter() - t0
            size = (Path(tmp) / manifest.search_file).stat().st_size
        rows.append(
            {
                "index_type": manifest.index_type,
                "params": plan.params,
                "count": n,
                "file_bytes": size,
                "bytes_per_vector": round(size / n, 1),
                "publish_s": round(seconds, 3),
            }
        )
    return rows


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="JPEGs in the generated folder (default 3000)")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "index_speed", help="corpus, model and index cache")
    ap.add_argument("--model", type=Path, help="a trained model directory (default: train one, cached in --workdir)")
    ap.add_argument("--train-images", type=int, default=512, help="images the cached model is trained on")
    ap.add_argument("--train-epochs", type=int, default=3, help="epochs for the cached model")
    ap.add_argument("--device", help="cpu, cuda, ... (default: what the Encoder picks)")
    ap.add_argument("--workers", type=int, help="decode workers (default: what build_index picks)")
    ap.add_argument("--batch-size", type=int, help="build_index batch size (default: build_index's)")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads in the build process (default: torch's)")
    ap.add_argument("--vectors", type=int, default=20_000, help="synthetic vectors for the memory table")
    ap.add_argument("--out", type=Path, default=RESULTS / "index_speed.json", help="JSON results")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from encoder.checkpoint import read_config
    from encoder.decoding import default_backend, default_workers
    from encoder.image_files import find_images

    workdir = args.workdir.resolve()
    folder = workdir / f"jpegs-{args.n}"
    gen_s = ensure_corpus(folder, args.n, default_workers())
    paths = find_images(folder)
    corpus_bytes = warm_page_cache(paths)
    model_dir = args.model.resolve() if args.model else workdir / "model-default"
    train_s = 0.0 if args.model else ensure_model(model_dir, folder, args.train_images, args.train_epochs, args.device)
    size = read_config(model_dir)[0].image_size
    workers = args.workers or default_workers()
    n = len(paths)
    info = machine()
    print(f"machine: {describe_machine(info)}", flush=True)
    print(
        f"corpus: {n} JPEGs, {corpus_bytes / n / 1024:.0f} KiB each on average; model input {size}x{size}", flush=True
    )

    stages: dict[str, Any] = {}
    print("plain loop ...", flush=True)
    stages["plain_before_s"] = plain_loop(paths, size)
    print("decode only ...", flush=True)
    stages["decode_1_s"], _, _ = decode_only(paths, size, 1)
    stages["decode_wp_s"], stages["decode_wp_first_s"], _ = decode_only(paths, size, workers, "process")
    stages["decode_w_s"], stages["decode_w_first_s"], pixels = decode_only(paths, size, workers, "thread")
    print("hash only ...", flush=True)
    stages["hash_s"] = hash_only(paths)
    print("embed only ...", flush=True)
    batch = args.batch_size or 256
    stages["embed_s"], device = embed_only(model_dir, pixels, args.device, batch)
    del pixels
    print("build_index: first run and no-change second run ...", flush=True)
    opts = {
        "device": args.device,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "torch_threads": args.torch_threads,
    }
    e2e = end_to_end(folder, workdir / "index", model_dir, opts)
    print("build_index: first run with one embedding thread (indexer.distribute.default_embedders: 1) ...", flush=True)
    e2e_one = end_to_end(folder, workdir / "index", model_dir, {**opts, "embedders": 1})
    print("plain loop again ...", flush=True)
    stages["plain_after_s"] = plain_loop(paths, size)
    print(f"vector memory over {args.vectors:,} vectors ...", flush=True)
    vmem = vector_memory(args.vectors, 128)

    first, second = e2e["first"], e2e["second"]
    if first["summary"]["embedded"] != n:
        raise RuntimeError(f"the first run embedded {first['summary']['embedded']} of {n} images")
    plain_s = (stages["plain_before_s"] + stages["plain_after_s"]) / 2
    e2e_rate = rate(n, first["wall_s"])
    plain_rate = rate(n, plain_s)
    ratio = round(e2e_rate / plain_rate, 2) if plain_rate else 0.0
    results: dict[str, Any] = {
        "command": command_line(),
        "machine": info,
        "corpus": {"images": n, "size": [WIDTH, HEIGHT], "mean_bytes": round(corpus_bytes / n), "folder": str(folder)},
        "model": {"dir": str(model_dir), "image_size": size, "device": device, "trained_s": round(train_s, 1)},
        "generated_s": round(gen_s, 1),
        "workers": workers,
        "batch_size": batch,
        "torch_threads_build": e2e["torch_threads"],
        "images_per_second": {
            "plain_loop": plain_rate,
            "plain_loop_before": rate(n, stages["plain_before_s"]),
            "plain_loop_after": rate(n, stages["plain_after_s"]),
            "decode_many_1_worker": rate(n, stages["decode_1_s"]),
            f"decode_many_{workers}_workers": rate(n, stages["decode_w_s"]),
            f"decode_many_{workers}_processes": rate(n, stages["decode_wp_s"]),
            "hash_1_thread": rate(n, stages["hash_s"]),
            "embed_pixels": rate(n, stages["embed_s"]),
            "build_index_first_run": e2e_rate,
            "build_index_first_run_one_embedder": rate(n, e2e_one["first"]["wall_s"]),
        },
        "ratio_build_to_plain": ratio,
        "target_ratio": TARGET_RATIO,
        "decode_pool_first_image_s": round(stages["decode_wp_first_s"], 3),
        "decode_threads_first_image_s": round(stages["decode_w_first_s"], 3),
        "decode_backend_build": default_backend(),
        "first_run": {
            "wall_s": round(first["wall_s"], 3),
            "breakdown": first["breakdown"],
            "summary": first["summary"],
        },
        "second_run": {
            "wall_s": round(second["wall_s"], 3),
            "ratio_to_first": round(second["wall_s"] / first["wall_s"], 4),
            "summary": second["summary"],
        },
        "first_run_memory_mib": e2e["first_memory"],
        "vector_memory": vmem,
    }
    write_json(args.out, results)
    print_report(results)
    print(f"\nwrote {args.out}")
    return results


def print_report(r: dict[str, Any]) -> None:
    ips, w = r["images_per_second"], r["workers"]
    plain = ips["plain_loop"]
    rows = [
        ["plain loop (Pillow open, RGB, resize; 1 process)", ips["plain_loop"], 1.0],
        ["  plain loop: before / after the rest", f"{ips['plain_loop_before']:,.0f} / {ips['plain_loop_after']:,.0f}"],
        [
            "decode_many, 1 process (draft + letterbox)",
            ips["decode_many_1_worker"],
            ips["decode_many_1_worker"] / plain,
        ],
        [f"decode_many, {w} threads", ips[f"decode_many_{w}_workers"], ips[f"decode_many_{w}_workers"] / plain],
        [
            f"decode_many, {w} processes",
            ips[f"decode_many_{w}_processes"],
            ips[f"decode_many_{w}_processes"] / plain,
        ],
        ["content_hash, 1 thread", ips["hash_1_thread"], ips["hash_1_thread"] / plain],
        [
            f"Encoder.embed_pixels ({r['model']['device']}, batch {r['batch_size']})",
            ips["embed_pixels"],
            ips["embed_pixels"] / plain,
        ],
        ["build_index, first run (end to end)", ips["build_index_first_run"], r["ratio_build_to_plain"]],
        [
            "build_index, first run, one embedding thread",
            ips["build_index_first_run_one_embedder"],
            ips["build_index_first_run_one_embedder"] / plain,
        ],
    ]
    print(
        f"\n{r['corpus']['images']:,} JPEGs {r['corpus']['size'][0]}x{r['corpus']['size'][1]}, "
        f"{describe_machine(r['machine'])}"
    )
    print(table(rows, ["stage", "images/s", "x plain"]))
    verdict = "meets" if r["ratio_build_to_plain"] >= r["target_ratio"] else "BELOW"
    print(f"\nend to end / plain loop = {r['ratio_build_to_plain']:.2f}x ({verdict} the {r['target_ratio']}x target)")
    first, second, mem = r["first_run"], r["second_run"], r["first_run_memory_mib"]
    print(
        f"first run {first['wall_s']:.2f} s; no-change second run {second['wall_s']:.3f} s "
        f"({100 * second['ratio_to_first']:.1f}% of the first)"
    )
    spent = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in first["breakdown"].items())
    print(f"first run, where the time went (s): {spent}")
    print(
        f"first image after: decode processes {r['decode_pool_first_image_s']:.2f} s, threads "
        f"{r['decode_threads_first_image_s']:.3f} s; build_index decodes with {r['decode_backend_build']}s"
    )
    print(
        f"first run peak RSS: process {mem['self_mib']:,.0f} MiB, largest decode worker "
        f"{mem['largest_child_mib']:,.0f} MiB, process + live workers at once {mem['peak_tree_mib']:,.0f} MiB"
    )
    keys = ("index_type", "count", "file_bytes", "bytes_per_vector", "publish_s")
    vrows = [[v[k] for k in keys] for v in r["vector_memory"]]
    print()
    print(table(vrows, ["index", "vectors", "file bytes", "bytes/vector", "publish s"]))


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
