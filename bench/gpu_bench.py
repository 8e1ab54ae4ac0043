"""Every GPU measurement of the project in one run (issue 17): training, indexing, query latency.

    python bench/gpu_bench.py [--quick] [--budget-s 420] [--images N] [--model DIR] [--out FILE]

Meant to be started by bench/gpu.sh, which first installs what a bare GPU machine
lacks (faiss-cpu, sqlalchemy) from carried wheels. Runs on the CPU too: parts that
need CUDA or a missing package are reported as skipped, with the reason.

1. training: the bare training step of the default model at 128 px (ModelConfig(image_size=128)):
   augment, forward + backward in bf16 autocast (channels-last on CUDA), gradient clip,
   AdamW, on random uint8 batches already on the device; images/s after warm-up.
2. indexing, end to end on generated 640x480 JPEGs (Pillow, quality 90, in a temp dir):
   - Pillow: `encoder.decoding.decode_batches` (draft + letterbox) in threads, and in
     worker processes where that is the default backend, feeding `Encoder.embed_pixels`
     (which itself runs in bf16 autocast, channels-last, on CUDA);
   - nvJPEG (CUDA only): file bytes read in threads, `torchvision.io.decode_jpeg(device="cuda")`
     in batches, letterboxed on the GPU, embedded as above: the decoder's ceiling, no product code;
   - `indexer.build_index` itself on the folder (needs faiss and sqlalchemy), in a fresh process:
     the product's default path (on CUDA: JPEGs decoded on the GPU, encoder/gpu_decode.py), and
     next to it the other decoder (`LOOKALIKE_GPU_DECODE=0` on CUDA: Pillow; on a CPU
     `LOOKALIKE_GPU_DECODE=1`: torchvision's decoder on the CPU, so the smoke run exercises it).
3. query latency: `Encoder.embed` of one uploaded JPEG (bytes), model on the best device, as the
   server runs it (bf16 autocast on CUDA), p50/p99; and a faiss flat inner-product search over
   100,000 random vectors (needs faiss).

Each part has a time budget (a share of --budget-s), so the whole run stays under 8 minutes
on one H200. The JSON (written after every part, "complete" once all ran) holds the machine,
every figure, and the issue's targets with pass/fail. The model is an untrained default-config
one unless --model is given (speed does not depend on the weights), with the default search vector
(VLAD, then centring) fitted on generated JPEGs as training would fit it: the vector users get.

The parts live beside this file, which keeps the settings, the budget and the command line:
bench/gpu_training.py (1), gpu_corpus.py (the JPEGs and the model), gpu_indexing.py (2),
gpu_query.py (3) and gpu_report.py (the machine, the targets, the printed table).

Top-level imports stay light (stdlib + bench/common.py), here and in those modules: JPEG
generation and decoding workers are started with ``spawn`` and re-import this file, and
build_index's fresh process runs it with --build-index-child.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, write_json
from gpu_corpus import HEIGHT, WIDTH, _make_jpeg, generate, jpeg_paths, make_model
from gpu_indexing import build_index_child, build_index_part, load_encoder, nvjpeg_pipeline, pillow_pipeline
from gpu_query import FAISS_VECTORS, query_embed, query_faiss
from gpu_report import machine_info, report, skipped, targets
from gpu_training import training

# ---------------------------------------------------------------- settings by device


def settings(cuda: bool, quick: bool) -> dict[str, Any]:
    """Sizes and each part's time cap (seconds) for the device; --quick is a tiny smoke run."""
    if quick:
        return {
            "train_batch": 4,
            "train_s": 1.0,
            "images": 24,
            "index_batch": 8,
            "queries": 8,
            "faiss_queries": 20,
            "fit_images": 16,
            "caps": {"training": 30, "generate": 30, "pipeline": 20, "build_index": 60, "query": 30},
        }
    if cuda:
        return {
            "train_batch": 256,
            "train_s": 20.0,
            "images": 20_000,
            "index_batch": 256,
            "queries": 300,
            "faiss_queries": 300,
            "fit_images": 512,
            "caps": {"training": 60, "generate": 90, "pipeline": 40, "build_index": 120, "query": 30},
        }
    return {
        "train_batch": 32,
        "train_s": 10.0,
        "images": 1_000,
        "index_batch": 64,
        "queries": 50,
        "faiss_queries": 100,
        "fit_images": 256,
        "caps": {"training": 60, "generate": 60, "pipeline": 40, "build_index": 120, "query": 30},
    }


class Budget:
    """The run's deadline, and each part's share of what is left."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.t0)

    def part(self, cap: float, keep: float = 0.0) -> float:
        """Seconds a part may take: its cap, or what is left once `keep` is kept for later parts."""
        return max(0.0, min(cap, self.left() - keep))


def have(module: str, without: set[str]) -> str | None:
    """None when `module` can be imported, else why not (missing, or switched off with --without)."""
    if module in without:
        return f"{module} switched off (--without / GPU_BENCH_WITHOUT)"
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (bench/gpu.sh installs it from wheels in .whl/)"
    return None


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="the whole run's time budget (default 420)")
    ap.add_argument("--images", type=int, help="JPEGs to generate (default: 20000 CUDA, 1000 CPU, 24 quick)")
    ap.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    ap.add_argument("--model", type=Path, help="a model directory (default: an untrained default-config model)")
    ap.add_argument("--parts", default="training,indexing,query", help="which parts to run (default: all three)")
    ap.add_argument("--without", default=os.environ.get("GPU_BENCH_WITHOUT", ""), help="modules to treat as absent")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="the JSON file (default bench/results)")
    ap.add_argument("--build-index-child", nargs=4, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_part(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]], out: Path) -> None:
    """Run one measurement; an exception is recorded as that part's error, never the end of the run."""
    print(f"-- {key} ...", flush=True)
    t0 = time.perf_counter()
    try:
        value = fn()
    except Exception as exc:
        traceback.print_exc()
        value = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    value.setdefault("part_s", round(time.perf_counter() - t0, 2))
    section, _, name = key.partition(".")
    if name:
        results[section][name] = value
    else:
        results[section] = value
    msg = value.get("reason") or value.get("error") or ""
    print(f"   {value['status']} in {value['part_s']} s {msg}", flush=True)
    write_json(out, results)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.build_index_child:
        build_index_child(*args.build_index_child)
        return {}
    budget = Budget(args.budget_s)
    import torch

    from encoder.decoding import default_backend
    from encoder.device import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    cfg = settings(cuda, args.quick)
    caps = cfg["caps"]
    n_images = args.images or cfg["images"]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    without = {m.strip() for m in args.without.split(",") if m.strip()}
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {
        "command": command_line(),
        "complete": False,
        "quick": args.quick,
        "budget_s": args.budget_s,
        "device": str(device),
        "machine": machine_info(),
        "training": skipped("not asked (--parts)"),
        "indexing": {},
        "query": {},
    }
    print(f"machine: {describe_machine(results['machine'])}", flush=True)
    print(f"device {device}; budget {args.budget_s:.0f} s; parts {','.join(sorted(parts))}", flush=True)

    if "training" in parts:
        cap = budget.part(caps["training"])
        run_part(results, "training", lambda: training(device, cfg["train_batch"], cfg["train_s"], cap), args.out)

    with tempfile.TemporaryDirectory(prefix="lookalike-gpu-bench-") as tmp:
        tmpdir = Path(tmp)
        no_scipy = have("scipy", without)  # the VLAD words are fitted with SciPy's k-means
        fit_images = 0 if no_scipy else cfg["fit_images"]
        if args.model:
            model_dir = args.model.resolve()
        else:
            try:
                model_dir = make_model(tmpdir / "model", fit_images)
            except ImportError as exc:  # SciPy there but unusable (a wheel for another NumPy, say)
                no_scipy, fit_images = f"the VLAD fit failed: {exc}", 0
                shutil.rmtree(tmpdir / "model", ignore_errors=True)
                model_dir = make_model(tmpdir / "model")
        from encoder.checkpoint import read_config
        from encoder.vlad import VLAD_FILE

        size = read_config(model_dir)[0].image_size
        pooling = "vlad" if (model_dir / VLAD_FILE).exists() else "mean"
        what = str(model_dir) if args.model else f"untrained, default ModelConfig, {pooling} pooling"
        if not args.model and fit_images:
            what += f" fitted on {fit_images} generated JPEGs"
        elif not args.model:
            what += f" (not the default VLAD: {no_scipy})"
        results["model"] = {"dir": what, "size": size, "pooling": pooling}
        folder = tmpdir / "jpegs"
        paths: list[Path] = []

        if "indexing" in parts:
            gen = generate(folder, n_images, budget.part(caps["generate"]))
            paths = jpeg_paths(folder)
            results["indexing"]["corpus"] = {**gen, "usable": len(paths), "size": [WIDTH, HEIGHT]}
            print(f"   {len(paths)} JPEGs of {WIDTH}x{HEIGHT}, {gen['mean_kib']} KiB each, in {gen['seconds']} s")
            for p in paths:  # page cache: no pipeline pays for the disk
                p.read_bytes()
            enc = load_encoder(model_dir, device)
            batch = cfg["index_batch"]
            cap = caps["pipeline"]
            run_part(
                results,
                "indexing.pillow_threads",
                lambda: pillow_pipeline(enc, paths, batch, cores, "thread", budget.part(cap)),
                args.out,
            )
            if default_backend() == "process":
                run_part(
                    results,
                    "indexing.pillow_processes",
                    lambda: pillow_pipeline(enc, paths, batch, cores, "process", budget.part(cap)),
                    args.out,
                )
            if cuda:
                run_part(
                    results,
                    "indexing.nvjpeg",
                    lambda: nvjpeg_pipeline(enc, paths, batch, min(8, cores), budget.part(cap)),
                    args.out,
                )
            else:
                results["indexing"]["nvjpeg"] = skipped("no CUDA device: torchvision's GPU JPEG decoder needs one")
            del enc
            if cuda:
                torch.cuda.empty_cache()
            missing = have("faiss", without) or have("sqlalchemy", without)
            if missing:
                results["indexing"]["build_index"] = skipped(missing)
            else:
                run_part(
                    results,
                    "indexing.build_index",
                    lambda: build_index_part(
                        folder, len(paths), model_dir, str(device), budget.part(caps["build_index"], keep=20)
                    ),
                    args.out,
                )
                # The other decoder, side by side: Pillow on CUDA; torchvision's on a CPU (a check, not a speed).
                other, switch = ("build_index_pillow", "0") if cuda else ("build_index_torchvision", "1")
                run_part(
                    results,
                    f"indexing.{other}",
                    lambda: build_index_part(
                        folder, len(paths), model_dir, str(device), budget.part(caps["build_index"], keep=20), switch
                    ),
                    args.out,
                )
        else:
            results["indexing"] = {"status": "skipped", "reason": "not asked (--parts)"}

        if "query" in parts:
            if paths:
                jpeg = paths[0].read_bytes()
            else:
                _make_jpeg((str(tmpdir / "query.jpg"), 0))
                jpeg = (tmpdir / "query.jpg").read_bytes()
            cap = caps["query"]
            run_part(
                results,
                "query.embed_one",
                lambda: query_embed(model_dir, device, jpeg, cfg["queries"], budget.part(cap / 2)),
                args.out,
            )
            missing = have("faiss", without)
            if missing:
                results["query"]["faiss_flat"] = skipped(missing)
            else:
                from encoder import Encoder

                dim = Encoder(model_dir, "cpu").dim
                run_part(
                    results,
                    "query.faiss_flat",
                    lambda: query_faiss(dim, FAISS_VECTORS, cfg["faiss_queries"], budget.part(cap / 2)),
                    args.out,
                )
        else:
            results["query"] = {"status": "skipped", "reason": "not asked (--parts)"}

    results["targets"] = targets(results)
    results["total_s"] = round(time.perf_counter() - budget.t0, 1)
    results["complete"] = True
    write_json(args.out, results)
    print()
    print(report(results))
    print(f"\nwrote {args.out} in {results['total_s']} s")
    return results


if __name__ == "__main__":
    main()
