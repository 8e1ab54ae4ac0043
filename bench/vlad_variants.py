"""Variants of the VLAD aggregation on the product's trained models, scored by mAP@10 (issue 18, stop 32).

    .venv/bin/python bench/vlad_variants.py --models '/tmp/e18eval/{corpus}/s{seed}/base-finetune'
        [--arms plain,rn,lcs,rn_lcs,mv2,mv3,ssrpca] [--corpora tuxpaint,tuxcat,...] [--seeds 0,1]
        [--out bench/results/vlad_variants.json]

Per corpus and seed: the trunk's maps of every image (the picture's colours first, as the product
pools them) are computed once; the product's pooling is fitted on them (``encoder.vlad.fit_vlad``,
"default"), then each arm re-aggregates with the same words and fits its own 240-d projection. Each
vector is scored as the product scores it: unit length, centred on the corpus, mAP@10 by label
(``search.evaluation.metrics``). "tuxcat" is Tux Paint by its 15 categories.

Arms (none of them in the product; docs/benchmarks.md, "Stop 32"):

- ``plain``: this script's own aggregation with no change (checks it against "default");
- ``rn``: residual normalisation, each descriptor's residual unit length before the sum;
- ``lcs``: each word's residual sum rotated into that word's principal axes (fitted on the residuals
  of the fit's descriptors) before the signed square root ("local coordinate system");
  ``rn_lcs`` both (Delhumeau, Gosselin, Jegou and Perez 2013, "Revisiting the VLAD image representation");
- ``mvN``: N vocabularies (k-means from different draws), their VLADs concatenated, then projected
  (Jegou and Chum 2012, "Negative evidence and co-occurrences in image retrieval");
- ``ssrpca``: the signed square root once more, after the projection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from base_model_eval import CORPORA  # noqa: E402

ARMS = ("plain", "rn", "lcs", "rn_lcs", "mv2", "mv3", "ssrpca")


def assign(desc: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """(B, L, C) descriptors -> (B, L) index of the nearest word."""
    flat = desc.reshape(-1, desc.shape[-1])
    dist = torch.addmm((words * words).sum(1), flat, words.T, alpha=-2)
    return torch.from_numpy(dist.numpy().argmin(1)).view(desc.shape[0], -1)


def aggregate(desc: torch.Tensor, words: torch.Tensor, *, rn: bool, rot: torch.Tensor | None) -> torch.Tensor:
    """The product's VLAD (``encoder.vlad.aggregate``), optionally with `rn` and the rotations `rot` (K, C, C)."""
    b, _, c = desc.shape
    k = words.shape[0]
    near = assign(desc, words)
    res = (desc - words[near]).reshape(-1, c)
    if rn:
        res = F.normalize(res, dim=1, eps=1e-12)
    slot = (near + torch.arange(b).unsqueeze(1) * k).flatten()
    v = torch.zeros(b * k, c).index_add_(0, slot, res).view(b, k, c)
    if rot is not None:  # linear, so rotating the sum is rotating each residual
        v = torch.einsum("bkc,kcd->bkd", v, rot)
    v = v.sign() * v.abs().sqrt()
    v = F.normalize(v, dim=2, eps=1e-6)
    return F.normalize(v.reshape(b, k * c), dim=1, eps=1e-6)


def fit_rotations(desc: torch.Tensor, words: torch.Tensor, *, rn: bool) -> torch.Tensor:
    """(K, C, C): per word, the principal axes of its residuals, by decreasing variance (identity if < 2)."""
    near = assign(desc.unsqueeze(0), words)[0]
    rots = torch.eye(desc.shape[1]).repeat(words.shape[0], 1, 1)
    for j in range(words.shape[0]):
        r = (desc[near == j] - words[j]).double()
        if len(r) < 2:
            continue
        if rn:
            r = F.normalize(r, dim=1, eps=1e-12)
        _, u = torch.linalg.eigh(r.T @ r / len(r))
        rots[j] = u.flip(1).float()
    return rots


def project(raw: torch.Tensor, dim: int = 240) -> torch.Tensor:
    """Onto the first `dim` principal axes of `raw` itself (what ``fit_vlad`` fits)."""
    x = (raw - raw.double().mean(0).float()).double()
    var, u = torch.linalg.eigh(x @ x.T)
    keep = min(dim, int((var > var.max() * 1e-5).sum()))
    var, u = var.flip(0)[:keep], u.flip(1)[:, :keep]
    return (x @ ((x.T @ u) / var.sqrt())).float()


def score(v: torch.Tensor, labels: list[str]) -> float:
    from search.evaluation.metrics import retrieval_metrics

    u = F.normalize(v, dim=1).numpy()
    return retrieval_metrics(u - u.mean(0), labels)["map_at_10"]


def run(corpus: str, seed: int, model_dir: Path, arms: list[str]) -> dict[str, float]:
    from encoder.checkpoint import load_model
    from encoder.decoding import decode_to_array
    from encoder.search_vector import stage_maps
    from encoder.vlad import fit_vlad, local_descriptors
    from search.evaluation.corpus import read_labelled_folder

    folder, column, max_images = CORPORA[corpus]
    c = read_labelled_folder(folder, label_column=column, max_images=max_images, seed=seed)
    model = load_model(model_dir, torch.device("cpu")).eval()
    pixels, _, _ = decode_to_array(c.paths, model.config.image_size)
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float().div(255)
    n = len(x)
    with torch.no_grad():
        batches = [stage_maps(x[s : s + 256], model.trunk.maps(x[s : s + 256]), True) for s in range(0, n, 256)]
        maps = [torch.cat([b[j].float() for b in batches]) for j in range(len(batches[0]))]

        def maps_of(idx: np.ndarray) -> list[torch.Tensor]:
            return [m[torch.from_numpy(idx)] for m in maps]

        def raw_of(vlad) -> torch.Tensor:
            return torch.cat([vlad.raw([m[s : s + 256] for m in maps]) for s in range(0, n, 256)])

        vocabularies = [fit_vlad(maps_of, n, 240, colour=True)]
        base = vocabularies[0]
        out = {"default": score(torch.cat([base([m[s : s + 256] for m in maps]) for s in range(0, n, 256)]), c.labels)}
        gen = np.random.default_rng(0)
        for arm in arms:
            if arm.startswith("mv"):
                while len(vocabularies) < int(arm[2:]):
                    vocabularies.append(fit_vlad(maps_of, n, 240, colour=True, seed=len(vocabularies)))
                raw = torch.cat([raw_of(v) for v in vocabularies[: int(arm[2:])]], 1)
                out[arm] = score(project(F.normalize(raw, dim=1)), c.labels)
                continue
            if arm == "ssrpca":
                v = project(raw_of(base))
                out[arm] = score(v.sign() * v.abs().sqrt(), c.labels)
                continue
            rn = arm in ("rn", "rn_lcs")
            rots = None
            if arm in ("lcs", "rn_lcs"):
                rots = []
                for m, w in zip(maps, base.words, strict=True):
                    d = local_descriptors(m).reshape(-1, m.shape[1])
                    rots.append(fit_rotations(d[gen.choice(len(d), min(len(d), 200_000), replace=False)], w, rn=rn))
            parts = []
            for s in range(0, n, 256):
                blocks = [
                    aggregate(local_descriptors(m[s : s + 256]), w, rn=rn, rot=None if rots is None else rots[j])
                    for j, (m, w) in enumerate(zip(maps, base.words, strict=True))
                ]
                parts.append(F.normalize(torch.cat(blocks, 1), dim=1))
            out[arm] = score(project(torch.cat(parts)), c.labels)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="directory pattern with {corpus} and {seed}")
    ap.add_argument("--arms", default="plain,rn,lcs,rn_lcs")
    ap.add_argument("--corpora", default="tuxpaint,tuxcat")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vlad_variants.json")
    args = ap.parse_args()
    CORPORA["tuxcat"] = (CORPORA["tuxpaint"][0], "category", None)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"unknown arms {unknown}: choose from {', '.join(ARMS)}")
    torch.set_num_threads(2)
    results: dict[str, dict[str, float]] = {}
    for corpus in args.corpora.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            model = Path(args.models.format(corpus="tuxpaint" if corpus == "tuxcat" else corpus, seed=seed))
            row = run(corpus, seed, model, arms)
            results[f"{corpus}/s{seed}"] = row
            cells = "  ".join(f"{k} {v:.3f}" for k, v in row.items())
            print(f"{corpus} s{seed}: {cells}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
