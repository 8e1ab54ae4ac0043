"""bench/gpu_bench.py's record: the machine, the issue's targets with pass/fail, and the printed table.

Top-level imports stay light (stdlib + bench/common.py): bench/gpu_bench.py imports this
module, and its spawned workers and build_index child re-import that file.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from common import describe_machine, machine, table
from gpu_training import TRAIN_SIZE

#: Issue 17's targets, for one H100/H200 with 16 cores.
TARGETS = {"training_images_per_s": 30_000, "indexing_images_per_s": 5_000}
TARGET_MACHINE = "one H100/H200 GPU with 16 CPU cores"


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def machine_info() -> dict[str, Any]:
    import torch
    import torchvision

    info = machine()
    info["cpu_count"] = os.cpu_count()
    info["torchvision"] = torchvision.__version__
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["cuda_capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(0))
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    for mod in ("faiss", "sqlalchemy"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception:
            info[mod] = None
    return info


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the figure judged, its value and pass/fail."""
    out: dict[str, Any] = {"applies_to": TARGET_MACHINE, "measured_on": r["machine"].get("gpu") or "CPU (no GPU)"}
    tr = r.get("training", {})
    out["training_images_per_s"] = {
        "target": TARGETS["training_images_per_s"],
        "figure": "training.images_per_s",
        "measured": tr.get("images_per_s"),
        "pass": bool(tr.get("images_per_s") and tr["images_per_s"] >= TARGETS["training_images_per_s"]),
    }
    ix = r.get("indexing", {})
    best_name, best = None, 0.0
    for name in ("pillow_threads", "pillow_processes", "nvjpeg"):
        v = ix.get(name, {}).get("images_per_s") or 0.0
        if v > best:
            best_name, best = name, v
    bi = ix.get("build_index", {})
    if bi.get("images_per_s"):
        figure, value = "indexing.build_index.images_per_s", bi["images_per_s"]
    else:
        figure, value = (f"indexing.{best_name}.images_per_s" if best_name else None), best or None
    out["indexing_images_per_s"] = {
        "target": TARGETS["indexing_images_per_s"],
        "figure": figure,
        "measured": value,
        "pass": bool(value and value >= TARGETS["indexing_images_per_s"]),
        "best_pipeline": best_name,
        "best_pipeline_images_per_s": best or None,
    }
    return out


def report(r: dict[str, Any]) -> str:
    rows: list[list[Any]] = []

    def row(part: str, sec: dict[str, Any], key: str, unit: str) -> None:
        if sec.get("status") == "ok":
            rows.append([part, sec.get(key), unit, "ok"])
        else:
            rows.append([part, None, unit, f"{sec.get('status', 'not run')}: {sec.get('reason') or sec.get('error')}"])

    row(
        f"training step, {TRAIN_SIZE} px, batch {r['training'].get('batch', '')}",
        r["training"],
        "images_per_s",
        "img/s",
    )
    ix = r["indexing"]
    for name, label in (
        ("pillow_threads", "index: Pillow threads -> embed"),
        ("pillow_processes", "index: Pillow processes -> embed"),
        ("nvjpeg", "index: nvJPEG on the GPU -> embed"),
        ("build_index", "index: build_index end to end"),
        ("build_index_pillow", "index: build_index, Pillow (LOOKALIKE_GPU_DECODE=0)"),
        ("build_index_torchvision", "index: build_index, torchvision decoder on the CPU"),
    ):
        if name in ix:
            row(label, ix[name], "images_per_s", "img/s")
    q = r["query"]
    for name, label in (("embed_one", "query: Encoder.embed(bytes)"), ("faiss_flat", "query: faiss flat 100k")):
        sec = q.get(name, {})
        row(label + " p50", sec, "p50_ms", "ms")
        if sec.get("status") == "ok":
            rows.append([label + " p99", sec["p99_ms"], "ms", "ok"])
    lines = [f"machine: {describe_machine(r['machine'])}", table(rows, ["measurement", "value", "unit", "status"])]
    t = r["targets"]
    lines.append(f"\ntargets ({t['applies_to']}; measured on {t['measured_on']}):")
    for key in ("training_images_per_s", "indexing_images_per_s"):
        v = t[key]
        verdict = "PASS" if v["pass"] else "FAIL"
        lines.append(f"  {key} >= {v['target']:,}: {verdict} ({v['figure']} = {v['measured']})")
    return "\n".join(lines)
