"""The search vector's calibration, centred (the default) against Ledoit-Wolf whitened, on the same
weights and the same VLAD pooling (issue 18 item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibration_eval.py \
        --models 'bench/results/bm_s{seed}/{corpus}/s{seed}/base-finetune' --seeds 0 \
        [--corpora tuxpaint,...] [--out bench/results/calibration_eval_s0]

For each corpus and seed: the model the product fine-tuned on that corpus (``bench/base_model_eval.py
--arms finetune``), copied once per calibration, each copy's calibration fitted again on the corpus's
images (the images the product fits it on: the folder it trained on) and nothing else changed: the
weights and the VLAD words and projection are the same bytes. Both copies are scored in one
``evaluate`` run, beside raw pixels, PCA and HOG + colour, by mAP@10 by label; each arm's median
cosine of random pairs (issue 18's "within +-0.1 of 0") and the whitening's shrinkage weight are
recorded too.

Jegou and Chum (2012, "Negative evidence and co-occurrences in image retrieval: the benefit of PCA
and whitening") found whitening the PCA-projected VLAD the larger half of its gain. The product
projects its VLAD on principal axes without equalising them, and only centres; whitening was
measured before only on the mean-pooled vector (docs/benchmarks.md, issue 18's first section).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA, corpus_runs  # noqa: E402
from common import command_line, machine, table, write_json  # noqa: E402

#: The calibrations compared; the first is the default.
ARMS = ("centre", "whiten")
#: Random pairs drawn for the median cosine.
PAIRS = 20_000


def median_random_cosine(vectors: np.ndarray, seed: int, pairs: int = PAIRS) -> float:
    """Median cosine of `pairs` random pairs of distinct rows of unit `vectors`."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = (i + rng.integers(1, n, pairs)) % n  # never i itself
    return float(np.median(np.einsum("nd,nd->n", vectors[i], vectors[j])))


def recalibrate(model: Path, dest: Path, pixels: np.ndarray, kind: str) -> dict[str, float]:
    """Copy `model` to `dest` with its calibration fitted again as `kind` on `pixels`; the fit's facts."""
    from encoder import Encoder
    from encoder.calibration import CALIBRATION, fit_calibration, save_calibration

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("resume*", "*.png", CALIBRATION))
    enc = Encoder(dest, device="cpu")
    assert enc.calibration is None, "the copy must start uncalibrated"
    raw = enc.embed_pixels(pixels)  # unit vectors before any calibration
    fitted = fit_calibration(raw, kind)
    assert fitted is not None
    save_calibration(fitted, dest)
    return {"shrinkage": fitted.shrinkage, "median_random_cosine": median_random_cosine(fitted.apply(raw), 0)}


def run_one(name: str, seed: int, model: Path, out: Path) -> dict[str, Any]:
    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from search.evaluation import evaluate, write_report
    from search.evaluation.corpus import read_labelled_folder
    from search.evaluation.models import ModelSpec

    folder, label_column, max_images = CORPORA[name]
    work = out / name / f"s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
    pixels, _, failed = decode_to_array(corpus.paths, Encoder(model, device="cpu").image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    facts = {arm: recalibrate(model, work / arm, pixels, arm) for arm in ARMS}
    t0 = time.perf_counter()
    report = evaluate(
        folder,
        [ModelSpec(name=a, model_dir=work / a) for a in ARMS],
        work_dir=work,
        label_column=label_column,
        max_images=max_images,
        seed=seed,
        near_duplicates=0,
    )
    write_report(report, work / "report")
    maps = {m.name if m.kind == "model" else m.kind: m.metrics["map_at_10"] for m in report.methods}
    return {"corpus": name, "seed": seed, "model": str(model), "map_at_10": maps, "facts": facts,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="a directory pattern with {corpus} and {seed}")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "calibration_eval")
    args = ap.parse_args()
    rows = []
    for name, seed in corpus_runs(args.corpora, args.seeds):
        row = run_one(name, seed, Path(args.models.format(corpus=name, seed=seed)), args.out)
        rows.append(row)
        m, f = row["map_at_10"], row["facts"]
        print(
            f"{name} s{seed}: centre {m['centre']:.3f} whiten {m['whiten']:.3f} | HOG+colour {m['hog']:.3f} "
            f"PCA {m['pca']:.3f} | shrinkage {f['whiten']['shrinkage']:.3f} | median random cosine "
            f"{f['centre']['median_random_cosine']:+.3f} / {f['whiten']['median_random_cosine']:+.3f}",
            flush=True,
        )
    header = [
        "corpus",
        "seed",
        "centre (default)",
        "whiten",
        "change",
        "shrinkage",
        "whiten / HOG+colour",
        "whiten / PCA",
    ]
    cells = []
    for r in rows:
        m, f = r["map_at_10"], r["facts"]
        cells.append(
            [r["corpus"], r["seed"], f"{m['centre']:.3f}", f"{m['whiten']:.3f}", f"{m['whiten'] - m['centre']:+.3f}",
             f"{f['whiten']['shrinkage']:.3f}", f"{m['whiten'] / m['hog']:.2f}", f"{m['whiten'] / m['pca']:.2f}"]
        )  # fmt: skip
    print("\n" + table(cells, header, markdown=True))
    path = write_json(
        args.out / "summary.json",
        {"command": command_line(), "machine": machine(), "models": args.models, "rows": rows},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
