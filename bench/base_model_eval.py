"""The shipped base model against training from scratch and the baselines, on every labelled corpus (issue 18).

    .venv/bin/python bench/base_model_eval.py [--corpora tuxpaint,wallpapers,mnist,oxygen,gnome,elementary]
        [--seeds 0] [--arms frozen,finetune,scratch] [--base DIR] [--set KEY=VALUE ...]
        [--out bench/results/base_model]

Per corpus and seed, in one ``evaluate`` run (so raw pixels, PCA and HOG + colour are measured
beside the models, on the same images):

- ``frozen``: the base model as shipped, its search vectors centred on the corpus (the
  calibration fitted on the folder, as training fits it), no training at all;
- ``finetune``: the product's default training on the folder, started from the base model
  (``TrainConfig(init_from=BASE)``, the default step budget);
- ``finetune@N``: the same with a budget of N steps (``TrainConfig.min_steps``: N up to 1,000 training
  images, growing with the square root above, as the default 500 does), for how quality depends on
  the training budget;
- ``scratch``: the default training from random weights (``init_from=None``: what lookalike did
  before the base model).

``--set KEY=VALUE`` (repeatable) changes one ``TrainConfig`` field of the fine-tune arms (for
example ``--set augment=strong``); the arms keep their names, so give such a run its own ``--out``.

Prints a markdown table (mAP@10 by label, self excluded; each arm's ratio to HOG + colour and to
PCA) and writes ``<out>/summary.json``. Trained models are reused when already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SHARED = REPO.parent / "shared" / "corpora"
CORPORA_DIR = REPO / "bench" / "results" / "corpora"
#: name -> (folder, label column or None for the folder, max images or None)
CORPORA: dict[str, tuple[Path, str | None, int | None]] = {
    "tuxpaint": (SHARED / "tuxpaint", "subcategory", None),
    "wallpapers": (SHARED / "wallpapers", "group", None),
    "mnist": (SHARED / "mnist", None, 2000),
    "oxygen": (CORPORA_DIR / "oxygen", "label", None),
    "gnome": (CORPORA_DIR / "gnome", "label", None),
    "elementary": (CORPORA_DIR / "elementary", "label", None),
    "nuovext": (CORPORA_DIR / "nuovext", "label", None),
    "yaru": (CORPORA_DIR / "yaru", "label", None),
}


def corpus_runs(corpora: str, seeds: str) -> Iterator[tuple[str, int]]:
    """(corpus, seed) for each seed, then each corpus, of comma-separated `corpora` and `seeds`;
    a corpus whose folder is missing is skipped with a line saying how to build it."""
    for seed in (int(s) for s in seeds.split(",")):
        for name in corpora.split(","):
            if not CORPORA[name][0].exists():
                print(f"{name}: {CORPORA[name][0]} missing (bench/icon_corpora.py builds the icon corpora); skipped")
                continue
            yield name, seed


def frozen_model(base: Path, folder: Path, paths: list[Path], out: Path) -> Path:
    """The base model's files with a centring calibration fitted on `paths` (the corpus)."""
    from encoder import Encoder
    from encoder.calibration import fit_calibration, save_calibration
    from encoder.decoding import decode_to_array

    if (out / "calibration.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copyfile(base / name, out / name)
    enc = Encoder(out)  # no calibration yet: raw unit vectors
    pixels, _, _ = decode_to_array(paths, enc.image_size)
    calibration = fit_calibration(enc.embed_pixels(pixels), "centre")
    save_calibration(calibration, out)
    return out


def fine_tune_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as TrainConfig fields (the KEY=VALUE parsing of ``evaluate --model``);
    a model field or a malformed item stops the run before any training."""
    from search.evaluation.models import spec_from_arg

    spec = spec_from_arg("conv:" + ",".join(items))
    if spec.overrides:
        raise SystemExit(f"--set takes TrainConfig fields only, not {sorted(spec.overrides)}")
    return spec.train_overrides


def base_shape(base: Path) -> dict[str, Any]:
    """The fields of `base`'s model configuration that differ from the default one (a wider
    trunk, say): the fine-tune must ask for that model, since training refuses to start a model
    of one shape from weights of another."""
    from dataclasses import fields

    from encoder import ModelConfig
    from encoder.checkpoint import read_config

    given, default = read_config(base)[0], ModelConfig()
    names = [f.name for f in fields(ModelConfig) if f.name != "kind"]
    return {n: getattr(given, n) for n in names if getattr(given, n) != getattr(default, n)}


def run_one(
    name: str, seed: int, arms: list[str], base: Path, out: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    from search.evaluation import evaluate, write_report
    from search.evaluation.corpus import read_labelled_folder
    from search.evaluation.models import ModelSpec

    folder, label_column, max_images = CORPORA[name]
    work = out / name / f"s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    specs: list[Any] = []
    if "frozen" in arms:
        corpus = read_labelled_folder(folder, label_column=label_column, max_images=max_images, seed=seed)
        specs.append(ModelSpec(name="base-frozen", model_dir=frozen_model(base, folder, corpus.paths, work / "frozen")))
    for arm in arms:
        # "finetune": the default budget; "finetune@N": N steps (TrainConfig.min_steps) instead
        if arm == "finetune" or arm.startswith("finetune@"):
            steps = arm.partition("@")[2]
            over: dict[str, Any] = {
                "init_from": str(base),
                **({"min_steps": int(steps)} if steps else {}),
                **(overrides or {}),
            }
            spec_name = "base-finetune" + (f"-{steps}" if steps else "")
            specs.append(ModelSpec(name=spec_name, kind="conv", overrides=base_shape(base), train_overrides=over))
    if "scratch" in arms:
        specs.append(ModelSpec(name="scratch", kind="conv", train_overrides={"init_from": None}))
    t0 = time.perf_counter()
    report = evaluate(
        folder, specs, work_dir=work, label_column=label_column, max_images=max_images, seed=seed, near_duplicates=0
    )
    write_report(report, work / "report")
    maps = {m.name if m.kind == "model" else m.kind: m.metrics["map_at_10"] for m in report.methods}
    train_s = {m.name: m.train_seconds for m in report.methods if m.train_seconds is not None}
    return {
        "corpus": name,
        "seed": seed,
        "map_at_10": maps,
        "train_seconds": train_s,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--arms", default="frozen,finetune")
    ap.add_argument("--base", type=Path, default=None, help="base model directory [default: the shipped one]")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field of the fine-tunes"
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "base_model")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from encoder.base import base_model_dir

    base = args.base or base_model_dir()
    overrides = fine_tune_overrides(args.set)
    arms = args.arms.split(",")
    rows = []
    summary_path = args.out / "summary.json"
    done = json.loads(summary_path.read_text()) if summary_path.exists() else []
    for name in args.corpora.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(name, seed, arms, base, args.out, overrides)
            rows.append(row)
            done = [r for r in done if (r["corpus"], r["seed"]) != (name, seed)] + [row]
            args.out.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(done, indent=2) + "\n")
            m = row["map_at_10"]
            hog, pca = m["hog"], m["pca"]
            cells = " | ".join(
                f"{arm} {m[arm]:.3f} ({m[arm] / hog:.2f}x HOG, {m[arm] / pca:.2f}x PCA)"
                for arm in m
                if arm not in ("pixels", "pca", "hog")
            )
            print(
                f"| {name} | {seed} | {cells} | pixels {m['pixels']:.3f} | PCA {pca:.3f} | HOG {hog:.3f} |", flush=True
            )


if __name__ == "__main__":
    main()
