"""The VLAD search vector against the default one, on the same trained weights (issue 18 item 2).

    .venv/bin/python bench/vlad_eval.py --models '/tmp/pool/models/{corpus}-s{seed}' [--seeds 0,1]
        [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary] [--out bench/results/vlad_eval]

For each corpus and seed: the model the product trained on that corpus (``lookalike train FOLDER -o
DIR --seed SEED``), copied twice with its pooling refitted on the corpus's images
(:func:`encoder.search_vector.refit_search_vector`, what training fits once it ends; the weights are
the same bytes): "mean" (each stage averaged, the default before VLAD) and "vlad". Both are
scored in one ``evaluate`` run, beside raw pixels, PCA and HOG + colour, by mAP@10 by label. For
mnist the model is trained on the seed-0 sample of 2,000 (``read_labelled_folder``'s), and each
seed's sample is evaluated, the VLAD words fitted on it. ``--models base`` uses the shipped base
model, untrained, centred on the corpus (the "frozen" arm of bench/base_model_eval.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA, corpus_runs, frozen_model  # noqa: E402


def run_one(name: str, seed: int, model: Path, out: Path) -> dict[str, Any]:
    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from encoder.search_vector import refit_search_vector
    from search.evaluation import evaluate, write_report
    from search.evaluation.corpus import read_labelled_folder
    from search.evaluation.models import ModelSpec

    folder, label_column, max_images = CORPORA[name]
    work = out / name / f"s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
    if str(model) == "base":
        from encoder.base import base_model_dir

        model = frozen_model(base_model_dir(), folder, corpus.paths, work / "mean")
    pixels, _, failed = decode_to_array(corpus.paths, Encoder(model, device="cpu").image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    fit_s = {}
    for pooling in ("mean", "vlad"):  # both fitted here, on the corpus, from the same weights
        if (work / pooling).resolve() == Path(model).resolve():
            continue  # the frozen base model's copy, already centred as "mean"
        shutil.rmtree(work / pooling, ignore_errors=True)
        shutil.copytree(model, work / pooling, ignore=shutil.ignore_patterns("resume*", "*.png"))
        t0 = time.perf_counter()
        refit_search_vector(work / pooling, pixels, pooling=pooling, device="cpu")
        fit_s[pooling] = round(time.perf_counter() - t0, 1)
    specs = [ModelSpec(name=p, model_dir=work / p) for p in ("mean", "vlad")]
    t0 = time.perf_counter()
    report = evaluate(
        folder, specs, work_dir=work, label_column=label_column, max_images=max_images, seed=seed, near_duplicates=0
    )
    write_report(report, work / "report")
    maps = {m.name if m.kind == "model" else m.kind: m.metrics["map_at_10"] for m in report.methods}
    return {
        "corpus": name,
        "seed": seed,
        "model": str(model),
        "map_at_10": maps,
        "fit_seconds": fit_s,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="'base', or a directory pattern with {corpus} and {seed}")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vlad_eval")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    for name, seed in corpus_runs(args.corpora, args.seeds):
        model = Path("base") if args.models == "base" else Path(args.models.format(corpus=name, seed=seed))
        row = run_one(name, seed, model, args.out)
        rows.append(row)
        m = row["map_at_10"]
        print(
            f"{name} s{seed}: mean {m['mean']:.3f} vlad {m['vlad']:.3f} | pixels {m['pixels']:.3f} "
            f"PCA {m['pca']:.3f} HOG+colour {m['hog']:.3f} (fit {row['fit_seconds']} s)",
            flush=True,
        )
    print(
        "\n| corpus | seed | mean (the default) | VLAD | VLAD - mean | raw pixels | PCA | HOG + colour |"
        " VLAD / HOG+colour | VLAD / PCA |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        m = r["map_at_10"]
        print(
            f"| {r['corpus']} | {r['seed']} | {m['mean']:.3f} | {m['vlad']:.3f} | {m['vlad'] - m['mean']:+.3f} | "
            f"{m['pixels']:.3f} | {m['pca']:.3f} | {m['hog']:.3f} | {m['vlad'] / m['hog']:.2f} | "
            f"{m['vlad'] / m['pca']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"models": args.models, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
