"""The VLAD over local features of several input scales at once, against the default single scale,
on the same weights (issue 18 item 2).

    OMP_NUM_THREADS=1 .venv/bin/python bench/multiscale_eval.py \
        --models 'bench/results/bm_s{seed}/{corpus}/s{seed}/base-finetune' --seeds 0 \
        [--scales 64,48,32] [--corpora tuxpaint,...] [--out bench/results/multiscale_s0]

Multi-scale descriptors are the standard way retrieval pools a CNN's local features over sizes
(Radenovic, Tolias and Chum 2018, "Fine-tuning CNN image retrieval with no human annotation": the
image at scales 1, 1/sqrt(2) and 1/2, the descriptors pooled together). Here: the 64-px letterbox the
encoder embeds, and the same picture shrunk to each other scale (antialiased; rounded to the trunk's
multiple of 16: 48 and 32 px); every scale's stage maps (the colour stage included) go through the
trunk, and each stage's local descriptors from all scales are pooled into one VLAD of that stage
(one set of words per stage, fitted on the descriptors of all scales). Projection to 240-d and
centring as the product does (encoder/vlad.py, encoder/calibration.py). The single-scale arm is the
same code with ``--scales 64`` and reproduces the product's vector.

For each corpus and seed the model the product fine-tuned there (``bench/base_model_eval.py --arms
finetune``); mAP@10 by label, self excluded (``search.evaluation.metrics.retrieval_metrics``, what
``evaluate`` scores), and the embedding time of each arm, one thread.
"""

from __future__ import annotations

import argparse
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


def scaled(x: Any, size: int) -> Any:
    """(B, 3, S, S) images -> the same at `size` px (antialiased when shrinking); `x` itself at S."""
    import torch.nn.functional as F

    if size == x.shape[-1]:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def multiscale_maps(trunk: Any, x: Any, scales: tuple[int, ...]) -> list[Any]:
    """Per VLAD stage (the colour stage first), the stage maps of every scale side by side as one
    (B, C, 1, sum of h*w) map: :func:`encoder.vlad.local_descriptors` flattens a map's locations
    anyway, so the VLAD code pools the locations of all scales as if they were one map's."""
    import torch

    from encoder.vlad import stage_maps

    per_scale = []
    for s in scales:
        xs = scaled(x, s)
        per_scale.append(stage_maps(xs, trunk.maps(xs), colour=True))
    return [
        torch.cat([m[j].float().flatten(2) for m in per_scale], dim=2).unsqueeze(2) for j in range(len(per_scale[0]))
    ]


def vectors(model_dir: Path, pixels: np.ndarray, scales: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """Centred unit search vectors of `pixels` with the VLAD fitted on them over `scales`, and the
    seconds a pass of embedding took (after the fit)."""
    import torch
    import torch.nn.functional as F

    from encoder import Encoder
    from encoder.calibration import fit_calibration
    from encoder.vlad import fit_vlad

    enc = Encoder(model_dir, device="cpu")
    trunk = enc.model.trunk
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)

    def maps_of(idx: np.ndarray) -> list[torch.Tensor]:
        with torch.inference_mode():
            return multiscale_maps(trunk, images[torch.from_numpy(idx)].float().div(255.0), scales)

    vlad = fit_vlad(maps_of, len(images), enc.model.embedding_dim, colour=True)
    t0 = time.perf_counter()
    parts = []
    with torch.inference_mode():
        for s in range(0, len(images), 32):  # the encoder's CPU batch
            parts.append(F.normalize(vlad(maps_of(np.arange(s, min(s + 32, len(images))))), dim=1))
    seconds = time.perf_counter() - t0
    raw = torch.cat(parts).numpy()
    calibration = fit_calibration(raw, "centre")
    assert calibration is not None
    return calibration.apply(raw), seconds


def run_one(name: str, seed: int, model: Path, arms: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from search.evaluation.corpus import read_labelled_folder
    from search.evaluation.metrics import retrieval_metrics

    folder, label_column, max_images = CORPORA[name]
    corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
    pixels, _, failed = decode_to_array(corpus.paths, Encoder(model, device="cpu").image_size)
    if failed:
        raise SystemExit(f"{name}: {len(failed)} images failed to decode, e.g. {failed[0]}")
    row: dict[str, Any] = {"corpus": name, "seed": seed, "model": str(model), "map_at_10": {}, "embed_s": {}}
    for arm, scales in arms.items():
        v, secs = vectors(model, pixels, scales)
        row["map_at_10"][arm] = retrieval_metrics(v, corpus.labels)["map_at_10"]
        row["embed_s"][arm] = round(secs, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="a directory pattern with {corpus} and {seed}")
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--scales", default="64,48,32", help="the multi-scale arm's sizes, the encoder's first")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "multiscale")
    args = ap.parse_args()
    scales = tuple(int(s) for s in args.scales.split(","))
    arms = {"single": scales[:1], "multi": scales}
    rows = []
    for name, seed in corpus_runs(args.corpora, args.seeds):
        row = run_one(name, seed, Path(args.models.format(corpus=name, seed=seed)), arms)
        rows.append(row)
        m, t = row["map_at_10"], row["embed_s"]
        print(
            f"{name} s{seed}: single {m['single']:.3f} multi {m['multi']:.3f} ({m['multi'] - m['single']:+.3f}) "
            f"| embed {t['single']} s / {t['multi']} s",
            flush=True,
        )
    header = ["corpus", "seed", f"single scale ({scales[0]} px)", f"scales {args.scales}", "change",
              "embedding time, multi / single"]  # fmt: skip
    cells = []
    for r in rows:
        m, t = r["map_at_10"], r["embed_s"]
        cells.append(
            [r["corpus"], r["seed"], f"{m['single']:.3f}", f"{m['multi']:.3f}", f"{m['multi'] - m['single']:+.3f}",
             f"{t['multi'] / t['single']:.2f}x"]
        )  # fmt: skip
    print("\n" + table(cells, header, markdown=True))
    path = write_json(
        args.out / "summary.json",
        {"command": command_line(), "machine": machine(), "models": args.models, "scales": scales, "rows": rows},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
