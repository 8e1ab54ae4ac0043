"""Learned alone, hand-crafted alone, and the two combined, in one run (issue 18 item 2).

    .venv/bin/python bench/combined_features.py [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary]
        [--weights 0.5,1,2] [--seed 0] [--models DIR] [--out bench/results/combined_features.json]

The issue allows hand-crafted signals next to the learned ones only if the same run shows
learned alone, hand-crafted alone and combined. Per corpus (the corpora and label columns of
``bench/base_model_eval.py``), on the same decoded pixels:

- ``learned``: the shipped base model's search vectors, centred on the corpus (its calibration
  fitted there, as ``bench/base_model_eval.py``'s ``frozen`` arm): no training, so the run is
  minutes, and the question is whether HOG + colour adds to *a* learned vector; or, with
  ``--models DIR``, the product's default: the model ``bench/base_model_eval.py --arms finetune
  --out DIR`` fine-tuned on the corpus (``DIR/<corpus>/s<seed>/base-finetune``, its own
  calibration), so the seed is the one that model was trained and sampled with;
- ``hog``: HOG + colour histogram (``search.evaluation.fit_hog_colour``, the baseline of
  ``lookalike evaluate``);
- ``pca``: PCA at the learned vector's dimension;
- ``combined wW``: the unit learned vector scaled by sqrt(W) next to the unit, centred HOG + colour
  vector (W = 1: both count equally in the cosine; W = 0.5: HOG + colour twice the learned part).
- ``projected wW``: the same, centred and projected on its principal axes to the learned vector's
  dimension (fitted on the corpus, as the product fits its VLAD projection): the form a combined
  vector would have to take to keep the index's size and speed (2,516 numbers a vector unprojected
  at 64 px against 240).

Prints a markdown table of mAP@10 (label, self excluded) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA, frozen_model  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _project(x: np.ndarray, dim: int) -> np.ndarray:
    """`x` centred and projected on its `dim` leading principal axes (exact SVD: a few thousand rows)."""
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[: min(dim, len(vt))].T


def run_corpus(name: str, weights: list[float], seed: int, work: Path, models: Path | None) -> dict[str, float]:
    """mAP@10 of each arm on corpus `name`; the learned arm from `models` (fine-tuned) when given."""
    from encoder import Encoder
    from encoder.base import base_model_dir
    from encoder.decoding import decode_to_array
    from search.evaluation import fit_hog_colour, fit_pca, retrieval_metrics
    from search.evaluation.corpus import read_labelled_folder

    folder, column, most = CORPORA[name]
    corpus = read_labelled_folder(folder, label_column=column, max_images=most, seed=seed)
    if models is not None:
        model_dir = models / name / f"s{seed}" / "base-finetune"
        if not (model_dir / "train_log.json").exists():
            raise SystemExit(f"{name}: no fine-tuned model at {model_dir} (bench/base_model_eval.py --out {models})")
    else:
        model_dir = frozen_model(base_model_dir(), folder, corpus.paths, work / name / f"s{seed}" / "frozen")
    enc = Encoder(model_dir)
    pixels, _, failed = decode_to_array(corpus.paths, enc.image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    learned = _unit(enc.embed_pixels(pixels))
    hand = fit_hog_colour(pixels)(pixels)
    hand = _unit(hand - hand.mean(axis=0))
    arms = {"learned": learned, "hog": hand, "pca": fit_pca(pixels, enc.dim, seed)(pixels)}
    for w in weights:
        arms[f"combined w{w:g}"] = np.concatenate([learned * np.sqrt(w), hand], axis=1)
    for w in weights:
        arms[f"projected w{w:g}"] = _project(arms[f"combined w{w:g}"], learned.shape[1])
    return {arm: retrieval_metrics(v, corpus.labels)["map_at_10"] for arm, v in arms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--weights", default="0.5,1,2", help="learned part's weight against HOG + colour's")
    ap.add_argument("--seed", type=int, default=0, help="the sample of corpora cut to a size (mnist)")
    ap.add_argument("--models", type=Path, default=None, help="fine-tuned models of base_model_eval.py --out DIR")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "combined_features")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "combined_features.json")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    rows = []
    for name in args.corpora.split(","):
        t0 = time.perf_counter()
        if not CORPORA[name][0].exists():
            print(f"{name}: {CORPORA[name][0]} missing (bench/icon_corpora.py builds the icon corpora); skipped")
            continue
        maps = run_corpus(name, weights, args.seed, args.work, args.models)
        rows.append(
            {"corpus": name, "seed": args.seed, "map_at_10": maps, "seconds": round(time.perf_counter() - t0, 1)}
        )
        print(name, {k: round(v, 3) for k, v in maps.items()}, flush=True)
    arms = list(rows[0]["map_at_10"]) if rows else []
    print("\n| corpus | " + " | ".join(arms) + " | best combined / hog |")
    print("|---|" + "---:|" * (len(arms) + 1))
    for r in rows:
        m = r["map_at_10"]
        best = max(v for k, v in m.items() if k.startswith(("combined", "projected")))
        print(f"| {r['corpus']} | " + " | ".join(f"{m[a]:.3f}" for a in arms) + f" | {best / m['hog']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"seed": args.seed, "weights": weights, "models": str(args.models), "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
