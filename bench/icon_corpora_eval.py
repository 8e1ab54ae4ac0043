"""Search quality on the icon corpora of bench/icon_corpora.py, through the product path (issue 18).

    .venv/bin/python bench/icon_corpora_eval.py [--corpora oxygen,gnome,elementary] [--seeds 0,1]
        [--labels label,family] [--corpora-dir bench/results/corpora] [--out bench/results/icon_eval]

Per corpus and seed: ``build_index(folder, index_dir, progress=False)`` trains the default
model on the folder (seed 0: the product's defaults as they are; other seeds:
``TrainConfig(seed=N)``, nothing else changed) and indexes it; then
``lookalike evaluate FOLDER -m INDEX/model --out DIR [--label-column COL]`` (the CLI, in a
subprocess) scores raw pixels, PCA, HOG + colour and the model, mAP@10 by label. An index
already trained is reused. Prints one markdown row per corpus, seed and label column and
writes ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def train_index(folder: Path, index_dir: Path, seed: int) -> dict[str, Any]:
    from encoder.training import TrainConfig
    from indexer import build_index

    t0 = time.perf_counter()
    summary = build_index(folder, index_dir, progress=False, train_config=TrainConfig(seed=seed) if seed else None)
    return {
        "index_dir": str(index_dir),
        "seconds": round(time.perf_counter() - t0, 1),
        "trained": summary.trained,
        "train_s": round(summary.train_s, 1),
        "total": summary.total,
        "embedded": summary.embedded,
        "failed": len(summary.failed),
    }


def run_evaluate(folder: Path, model: Path, out: Path, label_column: str | None) -> dict[str, Any]:
    cmd = [str(REPO / ".venv" / "bin" / "lookalike"), "evaluate", str(folder), "-m", str(model), "--out", str(out)]
    if label_column:
        cmd += ["--label-column", label_column]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    report = json.loads((out / "report.json").read_text())
    maps = {m["kind"]: m["metrics"]["map_at_10"] for m in report["methods"]}
    by_name = {m["name"]: m["metrics"]["map_at_10"] for m in report["methods"]}
    return {
        "command": " ".join(cmd[1:]),
        "seconds": round(time.perf_counter() - t0, 1),
        "images": report["images"],
        "labels": report["labels"],
        "map_at_10": by_name,
        "by_kind": maps,
        "dims": {m["name"]: m["dim"] for m in report["methods"]},
    }


def row(corpus: str, seed: int, col: str, r: dict[str, Any]) -> str:
    k = r["by_kind"]
    model, hog, pca, pix = k.get("model"), k.get("hog"), k.get("pca"), k.get("pixels")

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if not a or not b else f"{a / b:.2f}"

    return (
        f"| {corpus} ({col}: {r['labels']} labels, {r['images']} images; seed {seed}) | {f(model)} | {f(pix)} "
        f"| {f(pca)} | {f(hog)} | {ratio(model, hog)} | {ratio(model, pca)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default="oxygen,gnome,elementary")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--labels", default="label", help="comma list of labels.csv columns ('label' = the folders)")
    ap.add_argument("--corpora-dir", type=Path, default=REPO / "bench" / "results" / "corpora")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "icon_eval")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cols = [c.strip() for c in args.labels.split(",") if c.strip()]
    summary_path = args.out / "summary.json"
    results: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    rows = []
    for corpus in [c.strip() for c in args.corpora.split(",") if c.strip()]:
        folder = args.corpora_dir / corpus
        for seed in seeds:
            base = args.out / corpus / f"seed{seed}"
            key = f"{corpus}/seed{seed}"
            entry = results.setdefault(key, {})
            print(f"{key}: indexing {folder}", flush=True)
            entry["index"] = train_index(folder, base / "index", seed)
            print(f"{key}: {entry['index']}", flush=True)
            for col in cols:
                out = base / f"evaluate-{col}"
                r = run_evaluate(folder, base / "index" / "model", out, None if col == "label" else col)
                entry[col] = r
                rows.append(row(corpus, seed, col, r))
                print(rows[-1], flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(results, indent=2) + "\n")
    print("| corpus (labels) | model | raw pixels | PCA | HOG + colour | model / HOG+colour | model / PCA |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"wrote {summary_path}")


if __name__ == "__main__":
    main()
