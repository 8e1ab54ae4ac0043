"""An evaluation's report as files: report.json (with each model's ratios to its baselines), report.md, report.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .run import EvaluationReport


def ratios(report: EvaluationReport, metric: str = "map_at_10") -> dict[str, dict[str, float]]:
    """Each model's `metric` over its own pixel, PCA and HOG + colour baselines."""
    out = {}
    for m in report.methods:
        if m.kind != "model":
            continue
        pix = next(b for b in report.methods if b.kind == "pixels" and b.image_size == m.image_size)
        pca = next(b for b in report.methods if b.kind == "pca" and b.name == f"pca-{m.dim} {m.image_size}px")
        hc = next(b for b in report.methods if b.kind == "hog" and b.image_size == m.image_size)
        out[m.name] = {
            "vs_pixels": m.metrics[metric] / max(pix.metrics[metric], 1e-12),
            "vs_pca": m.metrics[metric] / max(pca.metrics[metric], 1e-12),
            "vs_hog_colour": m.metrics[metric] / max(hc.metrics[metric], 1e-12),
        }
    return out


def to_markdown(report: EvaluationReport) -> str:
    """One row per method: retrieval metrics, near-duplicate recall, ratios to the baselines."""
    rel = ratios(report)
    lines = [
        "| method | size | dim | P@1 | P@10 | mAP@10 | x pixels | x PCA | x HOG+colour | near-dup R@1 | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.methods:
        r = rel.get(m.name)
        dup = m.near_duplicate_recall_at_1
        cells = [
            m.name,
            str(m.image_size),
            str(m.dim),
            f"{m.metrics['precision_at_1']:.3f}",
            f"{m.metrics['precision_at_10']:.3f}",
            f"{m.metrics['map_at_10']:.3f}",
            f"{r['vs_pixels']:.2f}" if r else "",
            f"{r['vs_pca']:.2f}" if r else "",
            f"{r['vs_hog_colour']:.2f}" if r else "",
            f"{dup['mean']:.3f}" if dup else "",
            f"{m.train_seconds:.0f}" if m.train_seconds else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_bar_chart(report: EvaluationReport, path: str | os.PathLike) -> None:
    """mAP@10 and precision@1 per method, baselines in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in report.methods]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5), dpi=100)
    colours = ["#888888" if m.kind != "model" else "#2b6cb0" for m in report.methods]
    ax.bar(x - 0.2, [m.metrics["map_at_10"] for m in report.methods], 0.4, color=colours, label="mAP@10")
    ax.bar(
        x + 0.2,
        [m.metrics["precision_at_1"] for m in report.methods],
        0.4,
        color=colours,
        alpha=0.5,
        label="precision@1",
    )
    ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(f"retrieval on {Path(report.folder).name} ({report.images} images, {report.labels} labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: EvaluationReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "report.png"}
    paths["json"].write_text(json.dumps({**report.to_dict(), "ratios": ratios(report)}, indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(report))
    save_bar_chart(report, paths["chart"])
    return paths
