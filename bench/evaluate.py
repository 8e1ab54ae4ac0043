"""Retrieval quality of the autoencoder family against raw pixels and PCA (issue 6).

    python bench/evaluate.py ../shared/corpora/tuxpaint --label-column subcategory \
        --model conv --model conv:embedding=latent --model vae --out bench/results/evaluate/tuxpaint

Trains each model kind on the folder (or takes a trained model directory), then prints
the markdown table and writes report.json, report.md and report.png into --out.
The same --seed gives the same report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.evaluation import evaluate, to_markdown, write_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", "-m", action="append", default=[], help="KIND[:key=value,...] or a model directory")
    ap.add_argument("--out", type=Path, default=Path("bench/results/evaluate"))
    ap.add_argument("--label-column", default=None, help="labels.csv column to use as the label [default: folder]")
    ap.add_argument("--max-images", type=int, default=None, help="evaluate a seeded random subset")
    ap.add_argument("--near-duplicates", type=int, default=200)
    ap.add_argument("--min-steps", type=int, default=None, help="training steps per model [default: TrainConfig's]")
    ap.add_argument("--image-size", type=int, default=None, help="model input size [default: ModelConfig's]")
    ap.add_argument("--channels", default=None, help="encoder stages, e.g. 16/32/64 [default: ModelConfig's]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_defaults = {"min_steps": args.min_steps} if args.min_steps else {}
    model_defaults: dict = {}
    if args.image_size:
        model_defaults["image_size"] = args.image_size
    if args.channels:
        model_defaults["channels"] = tuple(int(c) for c in args.channels.split("/"))
    report = evaluate(
        args.folder,
        args.model or ["conv"],
        work_dir=args.out / "models",
        label_column=args.label_column,
        max_images=args.max_images,
        near_duplicates=args.near_duplicates,
        seed=args.seed,
        model_defaults=model_defaults,
        train_defaults=train_defaults,
        device=args.device,
    )
    paths = write_report(report, args.out)
    print(to_markdown(report))
    print(f"{report.images} images, {report.labels} labels ({report.label_source}), {report.seconds:.0f} s")
    print(f"wrote {paths['json']}, {paths['markdown']}, {paths['chart']}")


if __name__ == "__main__":
    main()
