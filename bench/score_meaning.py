"""What the score shown to users means in each collection: the similarity and its percentile.

    .venv/bin/python bench/score_meaning.py [--models 'bench/results/vlad_eval/{corpus}/s{seed}/mean']
        [--seeds 0,1] [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary] [--queries 60]
        [--out bench/results/score_meaning.json]

For each corpus and seed: the product's trained weights for that corpus, copied, with the search
vector (VLAD and its centring) fitted again by the product's code on a random *half* of the corpus,
"the folder", which is what is indexed; the other half, "new", plays images the model never saw
(uploads). The pair scale is read off the folder's vectors as the engine reads it off an index
(search/pair_scale.py). Then:

- `--queries` folder images each altered as the evaluation alters near-duplicates
  (``search.evaluation.metrics.near_duplicate_bytes``: half size, JPEG 60, 10% cropped, 30%
  brighter, mirrored), uploaded: similarity to their original and its percentile;
- those images' most similar *other* folder image, and their most similar image of the same
  label: what a look-alike scores;
- random pairs of a new image and a folder image (an upload of an unrelated picture): their
  percentiles (uniform, 10 / 50 / 90 at the 10th / 50th / 90th, if the scale held for images
  outside the fit too).

Prints a table of medians and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA, corpus_runs  # noqa: E402

TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "flip")


def run_one(name: str, seed: int, weights: Path, work: Path, queries: int) -> dict[str, Any]:
    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from encoder.search_vector import refit_search_vector
    from search.evaluation.corpus import read_labelled_folder
    from search.evaluation.metrics import near_duplicate_bytes
    from search.pair_scale import fit_pair_scale, sample_rows

    folder, label_column, max_images = CORPORA[name]
    corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
    paths, labels = list(corpus.paths), np.asarray(corpus.labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    fitted, new = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    model = work / f"{name}-s{seed}"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(weights, model, ignore=shutil.ignore_patterns("resume*", "*.png"))
    size = Encoder(model, device="cpu").image_size
    pixels, _, failed = decode_to_array(paths, size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    t0 = time.perf_counter()
    refit_search_vector(model, pixels[fitted], pooling="vlad", device="cpu")
    fit_s = time.perf_counter() - t0
    enc = Encoder(model, device="cpu")
    v, v_new = enc.embed_pixels(pixels[fitted]), enc.embed_pixels(pixels[new])
    lab = labels[fitted]
    scale = fit_pair_scale(v[sample_rows(len(v))])  # as the engine reads it off an index of these vectors

    i, j = rng.integers(0, len(v_new), 20000), rng.integers(0, len(v), 20000)
    upload_sims = (v_new[i] * v[j]).sum(1)

    picks = rng.choice(len(v), min(queries, len(v)), replace=False)
    sims = v[picks] @ v.T
    sims[np.arange(len(picks)), picks] = -np.inf
    best_other = sims.max(1)
    same = lab[picks, None] == lab[None, :]
    same[np.arange(len(picks)), picks] = False
    best_same = np.where(same.any(1), np.where(same, sims, -np.inf).max(1), np.nan)
    best_same = best_same[np.isfinite(best_same)]
    copies: dict[str, dict[str, np.ndarray]] = {}
    for t in TRANSFORMS:
        c = enc.embed([near_duplicate_bytes(paths[fitted[p]], t, rng) for p in picks])
        s = (c * v[picks]).sum(1)
        copies[t] = {"similarity": s, "percentile": scale.percentile(s)}

    def quantiles(x: np.ndarray) -> dict[str, float]:
        x = x[np.isfinite(x)]
        return {f"p{q}": round(float(np.percentile(x, q)), 4) for q in (5, 10, 25, 50, 75, 90)} if len(x) else {}

    def both(x: np.ndarray) -> dict[str, dict[str, float]]:
        return {"similarity": quantiles(x), "percentile": quantiles(scale.percentile(x))}

    return {
        "corpus": name,
        "seed": seed,
        "folder_images": int(len(fitted)),
        "new_images": int(len(new)),
        "pair_scale_pairs": scale.pairs,
        "fit_seconds": round(fit_s, 1),
        "upload_pairs": both(upload_sims),
        "best_other": both(best_other),
        "best_same_label": both(best_same),
        "copies": {t: both(d["similarity"]) for t, d in copies.items()},
    }


def top(pct: float) -> str:
    share = 100.0 - pct
    return "<0.01" if share < 0.01 else f"{share:.0f}" if share >= 10 else f"{share:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(REPO / "bench/results/vlad_eval/{corpus}/s{seed}/mean"))
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "score_meaning.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    for name, seed in corpus_runs(args.corpora, args.seeds):
        with tempfile.TemporaryDirectory() as work:  # the refitted model copies are not kept
            rows.append(run_one(name, seed, Path(args.models.format(corpus=name, seed=seed)), Path(work), args.queries))
        print(f"{name} s{seed} done", flush=True)
    cols = " | ".join(TRANSFORMS)
    print("\nMedian similarity (and the share of the folder's pairs at least as high, 'top X%'):\n")
    print(f"| corpus | seed | {cols} | best other image | best same label | new image and folder image |")
    print("|---|---:|---|" + "---|" * (len(TRANSFORMS) + 2))
    for r in rows:

        def cell(d: dict[str, dict[str, float]]) -> str:
            return f"{d['similarity']['p50']:.2f} (top {top(d['percentile']['p50'])}%)" if d["similarity"] else "-"

        cells = " | ".join(cell(r["copies"][t]) for t in TRANSFORMS)
        print(
            f"| {r['corpus']} | {r['seed']} | {cells} | {cell(r['best_other'])} | "
            f"{cell(r['best_same_label'])} | {cell(r['upload_pairs'])} |"
        )
    print("\nPercentiles of a new image paired with a folder image (10th / 50th / 90th; uniform: 10 / 50 / 90):")
    for r in rows:
        p = r["upload_pairs"]["percentile"]
        print(f"  {r['corpus']} s{r['seed']}: {p['p10']:.1f} / {p['p50']:.1f} / {p['p90']:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"models": args.models, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
