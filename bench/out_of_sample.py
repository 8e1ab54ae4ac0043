"""Does the fitted search vector retrieve as well for images outside its fit? (issue 18)

    .venv/bin/python bench/out_of_sample.py [--models 'bench/results/vlad_eval/{corpus}/s{seed}/mean']
        [--seeds 0,1] [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary]
        [--out bench/results/out_of_sample.json]

The evaluation's mAP@10 figures fit the search vector's pooling (VLAD words, projection,
centring) on the very images they score. A user's uploads, images added after training and most
of a folder above 2,048 images are outside that fit. For each corpus and seed, the product's
weights for that corpus get the pooling fitted by the product's code (``refit_search_vector``)
twice: on the whole corpus ("in"), and on a random half A only ("out"). Queries are the other
half B; each one's same-label images are searched for among A (mAP@10, queries with no same-label
image in A left out). HOG + colour and PCA are fitted on A.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA, corpus_runs  # noqa: E402

K = 10


def map_at_k(q: np.ndarray, q_labels: np.ndarray, db: np.ndarray, db_labels: np.ndarray) -> float:
    """mAP@K of each query's same-label images among `db` (cosine), over queries that have one."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    top = np.argsort(-(q @ db.T), axis=1)[:, :K]
    rel = db_labels[top] == q_labels[:, None]
    total = (db_labels[None, :] == q_labels[:, None]).sum(1)
    ap = (np.cumsum(rel, 1) / np.arange(1, K + 1) * rel).sum(1) / np.minimum(K, np.maximum(total, 1))
    return float(ap[total > 0].mean())


def run_one(name: str, seed: int, weights: Path, work: Path) -> dict[str, Any]:
    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from encoder.search_vector import refit_search_vector
    from search.evaluation.baselines import fit_hog_colour, fit_pca
    from search.evaluation.corpus import read_labelled_folder

    folder, label_column, max_images = CORPORA[name]
    corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
    labels = np.asarray(corpus.labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    a, b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    pixels, _, failed = decode_to_array(list(corpus.paths), Encoder(weights, device="cpu").image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    row: dict[str, Any] = {"corpus": name, "seed": seed, "fitted_on_a": int(len(a)), "queries_b": int(len(b))}
    for arm, fit_on in (("in", np.arange(len(labels))), ("out", a)):
        model = work / f"{name}-s{seed}-{arm}"
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(weights, model, ignore=shutil.ignore_patterns("resume*", "*.png"))
        refit_search_vector(model, pixels[fit_on], pooling="vlad", device="cpu")
        v = Encoder(model, device="cpu").embed_pixels(pixels)
        row[arm] = map_at_k(v[b], labels[b], v[a], labels[a])
    for arm, fit in (("hog", fit_hog_colour), ("pca", lambda p: fit_pca(p, 240))):
        v = fit(pixels[a])(pixels)
        row[arm] = map_at_k(v[b], labels[b], v[a], labels[a])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(REPO / "bench/results/vlad_eval/{corpus}/s{seed}/mean"))
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "out_of_sample.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, seed in corpus_runs(args.corpora, args.seeds):
            weights = Path(args.models.format(corpus=name, seed=seed))
            rows.append(run_one(name, seed, weights, Path(work)))
            print(f"{name} s{seed}: " + " ".join(f"{k} {rows[-1][k]:.3f}" for k in ("in", "out", "hog", "pca")))
    print("\n| corpus | seed | fitted on all | fitted on A only | out - in | HOG + colour | PCA | out / HOG + colour |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['corpus']} | {r['seed']} | {r['in']:.3f} | {r['out']:.3f} | {r['out'] - r['in']:+.3f} | "
            f"{r['hog']:.3f} | {r['pca']:.3f} | {r['out'] / r['hog']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"models": args.models, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
