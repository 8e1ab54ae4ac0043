"""How the encoder's feature maps are pooled into the search vector, measured (issue 18 item 2).

    .venv/bin/python bench/pooling_eval.py [--models base | --models 'DIR/{corpus}-s{seed}']
        [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary] [--seeds 0,1]
        [--out bench/results/pooling_eval.json]

The default search vector (``ModelConfig.embedding = "multiscale"``) average-pools every encoder
stage over the whole image, L2-normalises each stage and concatenates them (240-d): it keeps
*what* is in the picture and drops *where*. HOG, the baseline that beats it, keeps an 8x8 grid of
cells. This script pools the same trunk's feature maps other ways, on the same decoded pixels, with
no retraining, so only the pooling differs between arms:

- ``gap_l2``: the product's vector (global average, L2 per stage);
- ``gap_sqrt``: the same, square-rooted first (power normalisation, as HOG + colour are);
- ``gem3``: generalised mean, p = 3, per stage;
- ``mean_std_sqrt``: each channel's mean and standard deviation, square-rooted;
- ``grid2_sqrt`` / ``grid2_gem`` / ``grid4_sqrt``: a 2x2 (4x4) grid of cells per stage, each
  cell's average (or GeM) kept in place, square-rooted: the layout HOG keeps.

Every arm is centred on the corpus and scaled to unit length (the product's default calibration),
then scored by mAP@10 by label, self excluded, next to HOG + colour histogram
(``search.evaluation.fit_hog_colour``). ``--models base`` uses the shipped base model as it is;
a pattern such as ``/tmp/m/{corpus}-s{seed}`` uses a model trained per corpus and seed, for example
the product's default training: ``lookalike train FOLDER -o /tmp/m/tuxpaint-s0 --seed 0``
(for mnist, on the seed-0 sample of 2,000 that ``read_labelled_folder`` draws).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from base_model_eval import CORPORA  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _centred(x: np.ndarray) -> np.ndarray:
    x = _unit(x)
    return _unit(x - x.mean(axis=0))


def stage_maps(trunk, pixels: np.ndarray, batch: int = 128) -> list:
    """Every encoder stage's (N, C, s, s) output for (N, S, S, 3) uint8 pixels."""
    import torch

    outs: list[list] = [[] for _ in trunk.stages]
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch])).permute(0, 3, 1, 2).float() / 255.0
            for j, stage in enumerate(trunk.stages):
                x = stage(x)
                outs[j].append(x)
    return [torch.cat(o) for o in outs]


def poolings() -> dict[str, Callable]:
    """name -> f(stage maps) -> (N, D) tensor; each stage L2-normalised before concatenation."""
    import torch
    import torch.nn.functional as F

    def per_stage(f: Callable) -> Callable:
        return lambda maps: torch.cat([F.normalize(f(m).flatten(1), dim=1) for m in maps], dim=1)

    def gem(m, cells: int = 1):
        return F.adaptive_avg_pool2d(m.clamp_min(1e-6).pow(3), cells).pow(1 / 3)

    return {
        "gap_l2": per_stage(lambda m: m.mean((2, 3))),
        "gap_sqrt": per_stage(lambda m: m.mean((2, 3)).clamp_min(0).sqrt()),
        "gem3": per_stage(gem),
        "mean_std_sqrt": per_stage(lambda m: torch.cat([m.mean((2, 3)), m.std((2, 3))], 1).clamp_min(0).sqrt()),
        "grid2_sqrt": per_stage(lambda m: F.adaptive_avg_pool2d(m, 2).clamp_min(0).sqrt()),
        "grid2_gem": per_stage(lambda m: gem(m, 2)),
        "grid4_sqrt": per_stage(lambda m: F.adaptive_avg_pool2d(m, 4).clamp_min(0).sqrt()),
    }


def _local(m, max_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stage's local descriptors: every location's channel vector, square-rooted and unit length.

    Returns (all descriptors as (N, L, C), a sample of at most `max_rows` of them for fitting).
    """
    d = m.clamp_min(0).sqrt().permute(0, 2, 3, 1).flatten(1, 2).numpy()  # (N, L, C)
    d = d / np.maximum(np.linalg.norm(d, axis=2, keepdims=True), 1e-6)
    flat = d.reshape(-1, d.shape[2])
    pick = rng.choice(len(flat), size=min(max_rows, len(flat)), replace=False)
    return d.astype(np.float32), np.ascontiguousarray(flat[pick], dtype=np.float32)


def _vlad(local: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """VLAD of (N, L, C) descriptors: residuals summed per centre, signed sqrt, intra-normalised."""
    import torch

    n, _, c = local.shape
    k = len(centroids)
    res = torch.from_numpy(local - centroids[assign]).reshape(-1, c)
    slot = torch.from_numpy((np.arange(n)[:, None] * k + assign).ravel())
    v = torch.zeros(n * k, c).index_add_(0, slot, res).reshape(n, k, c).numpy()
    v = np.sign(v) * np.sqrt(np.abs(v))
    v = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-6)
    return _unit(v.reshape(n, -1))


def fitted_poolings(maps: list, seed: int = 0) -> dict[str, np.ndarray]:
    """Poolings whose codebook is fitted on the corpus (as an index-time calibration would be).

    - ``bow{K}``: a bag of learned words: each stage's local descriptors (every location's channel
      vector, square-rooted, unit length) assigned to the nearest of K k-means centres, the per-image
      histogram square-rooted (Hellinger), L2 per stage, concatenated: what a colour or gradient
      histogram does, with the trunk's own features as the "colours";
    - ``vlad{K}``: the residuals to the K centres summed per centre, signed square root, intra-
      normalised per centre, L2 per stage, concatenated (Jegou et al.'s VLAD);
    - ``_s1``: the first stage only; ``_pca240``: projected on the corpus's first 240 principal
      components; ``_pcaw240``: the same, whitened with shrinkage (each component divided by the
      square root of its variance plus the mean variance of the 240).
    """
    import faiss

    rng = np.random.default_rng(seed)
    parts: dict[tuple[str, int], np.ndarray] = {}
    for si, m in enumerate(maps):
        n = m.shape[0]
        local, sample = _local(m, 200_000, rng)
        c = local.shape[2]
        for k in (64, 256, 1024):
            km = faiss.Kmeans(c, k, niter=20, seed=1234, verbose=False)
            km.train(sample)
            _, a = km.index.search(local.reshape(-1, c), 1)
            a = a.reshape(n, -1)
            if k == 1024:
                hist = np.zeros((n, k), np.float32)
                np.add.at(hist, (np.repeat(np.arange(n), a.shape[1]), a.ravel()), 1.0)
                parts[(f"bow{k}", si)] = _unit(np.sqrt(hist / a.shape[1]))
            else:
                parts[(f"vlad{k}", si)] = _vlad(local, km.centroids, a)
    stages = len(maps)
    arms: dict[str, np.ndarray] = {}
    for kind in ("bow1024", "vlad64", "vlad256"):
        arms[kind] = np.concatenate([parts[(kind, i)] for i in range(stages)], axis=1)
    arms["bow1024_s1"] = parts[("bow1024", 0)]
    arms["vlad64+bow1024_s1"] = np.concatenate([arms["vlad64"], parts[("bow1024", 0)]], axis=1)
    arms["vlad64+bow1024"] = np.concatenate([arms["vlad64"], arms["bow1024"]], axis=1)
    for name in ("vlad64", "vlad256", "vlad64+bow1024"):
        arms[name + "_pca240"] = _pca(arms[name], 240)
        arms[name + "_pcaw240"] = _pca(arms[name], 240, whiten=True)
    return arms


def _pca(x: np.ndarray, dim: int, whiten: bool = False) -> np.ndarray:
    x = _unit(x)
    x = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:dim].T
    if whiten:
        var = sv[:dim] ** 2 / len(x)
        y = y / np.sqrt(var + var.mean())
    return y


def run_corpus(name: str, model_dir: Path, seed: int, size: int | None = None) -> dict[str, dict[str, float]]:
    """mAP@10 (and the vector's dimension) of every pooling and of HOG + colour on corpus `name`."""
    import torch

    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from search.evaluation import fit_hog_colour, retrieval_metrics
    from search.evaluation.corpus import read_labelled_folder

    torch.set_num_threads(2)
    folder, column, most = CORPORA[name]
    corpus = read_labelled_folder(folder, label_column=column, max_images=most, seed=seed)
    enc = Encoder(model_dir, device="cpu")
    pixels, _, failed = decode_to_array(corpus.paths, size or enc.image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    maps = stage_maps(enc.model.trunk, pixels)
    out = {}
    for arm, pool in poolings().items():
        vec = pool(maps).numpy()
        out[arm] = {"map_at_10": retrieval_metrics(_centred(vec), corpus.labels)["map_at_10"], "dim": vec.shape[1]}
    for arm, vec in fitted_poolings(maps, seed).items():
        out[arm] = {"map_at_10": retrieval_metrics(_centred(vec), corpus.labels)["map_at_10"], "dim": vec.shape[1]}
    if size and size != enc.image_size:
        pixels, _, _ = decode_to_array(corpus.paths, enc.image_size)  # the baseline at its own 64 px
    hand = fit_hog_colour(pixels)(pixels)
    hand_map = retrieval_metrics(_centred(hand), corpus.labels)["map_at_10"]
    out["hog_colour"] = {"map_at_10": hand_map, "dim": hand.shape[1]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="base", help="'base', or a directory pattern with {corpus} and {seed}")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--size", type=int, default=None, help="embed at this input size (default: the model's)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pooling_eval.json")
    args = ap.parse_args()
    from encoder.base import base_model_dir

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.corpora.split(","):
            if not CORPORA[name][0].exists():
                print(f"{name}: {CORPORA[name][0]} missing (bench/icon_corpora.py builds the icon corpora); skipped")
                continue
            model = base_model_dir() if args.models == "base" else Path(args.models.format(corpus=name, seed=seed))
            t0 = time.perf_counter()
            arms = run_corpus(name, model, seed, args.size)
            rows.append(
                {
                    "corpus": name,
                    "seed": seed,
                    "model": str(model),
                    "arms": arms,
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
            print(name, seed, {k: round(v["map_at_10"], 3) for k, v in arms.items()}, flush=True)
    names = list(rows[0]["arms"]) if rows else []
    print("\n| corpus | seed | " + " | ".join(f"{a} ({rows[0]['arms'][a]['dim']}-d)" for a in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for r in rows:
        cells = " | ".join(f"{r['arms'][a]['map_at_10']:.3f}" for a in names)
        print(f"| {r['corpus']} | {r['seed']} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"models": args.models, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
