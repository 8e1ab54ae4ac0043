"""Pretrain the base model that ships in the package (issue 18 item 2), and install it.

    .venv/bin/python bench/pretrain_base.py [--corpus bench/results/corpora/pretrain] [--epochs 6]
        [--siamese 0.01] [--seed 0] [--channels 16,32,64,128] [--init-from none|base|DIR]
        [--out bench/results/base_model/pretrained] [--install]

Trains the default model (``ModelConfig()``; ``--channels`` widens its trunk, an experiment) with
the product's own training code on the corpus that ``bench/pretrain_corpus.py`` assembles from
Debian game and icon packages (or its packed copy, ``bench/pretrain_pack.py``): reconstruction plus
the siamese (VICReg) term at the weight tuned on Tux Paint, the default "invariant" augmentation,
a fixed number of epochs (no early stop), from random weights unless ``--init-from`` names a start
(``base``: the base model installed now, to train it further; the start is recorded in ``--out``'s
``start.json`` and in ``PROVENANCE.md``). ``--install`` then copies the weights and config into
``encoder/base_model/`` with ``PROVENANCE.md``: how it was trained, on what, and every package's
version, .deb SHA-256 and licence. Train on a GPU when one is at hand (``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BASE_DIR = REPO / "encoder" / "base_model"
#: In --out: what the run started from ({"init_from": ..., "what": a sentence}), for PROVENANCE.md.
START = "start.json"


def provenance_md(corpus: Path, model_dir: Path) -> str:
    prov = json.loads((corpus / "provenance.json").read_text())
    log = json.loads((model_dir / "train_log.json").read_text()) if (model_dir / "train_log.json").exists() else {}
    config = json.loads((model_dir / "config.json").read_text())
    train = config.get("meta", {}).get("train", {})
    minutes = sum(h.get("seconds", 0) for h in log.get("history", [])) / 60
    start = json.loads((model_dir / START).read_text()) if (model_dir / START).exists() else None
    if start is None and train.get("init_from") not in (None, "none"):
        # trained by a version of this script that did not record its start: say what is unknown
        began = f"Started from `init_from={train.get('init_from')!r}` (not recorded which model that was)."
    elif start is None or start.get("init_from") == "none":
        began = "Started from random weights."
    else:
        began = f"Started from {start['what']}, not from random weights."
    lines = [
        "# The base model: what it learned from",
        "",
        "Pretrained by the lookalike project with its own training code (`bench/pretrain_base.py`) on",
        f"{prov['images']:,} images assembled by `bench/pretrain_corpus.py` (seed {prov['seed']}, at most "
        f"{prov['per_package']:,} per package) from the artwork of the Debian 12 packages below, fetched with",
        "`apt-get download` and unpacked with `dpkg-deb -x`. No image of any evaluation corpus (Tux Paint stamps,",
        "the wallpaper packages, the oxygen, gnome and elementary-xfce icon themes, MNIST) and none of the sets",
        "kept for independent checks (openclipart, the MATE backgrounds, emoji sets) is in it.",
        "",
        f"Training: `ModelConfig()` defaults; {train.get('epochs')} epochs, batch {train.get('batch_size')}, "
        f"lr {train.get('lr')}, augment {train.get('augment')!r}, siamese weight {train.get('siamese')}, "
        f"seed {train.get('seed')}; {minutes:.0f} minutes at {log.get('train_images_per_second', 0):.0f} images/s "
        f"({log.get('device', '?')}). {began}",
        "The weights are a derived work of the images; each package's licence is named below, and its",
        "copyright file, as Debian ships it, is in `COPYRIGHT/<package>` beside this file.",
        "",
        "| package | version | images | licence (`Files: *`) | every licence named | .deb SHA-256 |",
        "|---|---|---:|---|---|---|",
    ]
    for p in prov["packages"]:
        lines.append(
            f"| {p['package']} | {p['version']} | {p['images']:,} | {p['licence']} | {', '.join(p['licences'])} | "
            f"`{p['deb_sha256'][:16]}...` |"
        )
    return "\n".join(lines) + "\n"


def describe_start(init_from: str) -> str:
    """One sentence on the model `init_from` names, for PROVENANCE.md, with the training line of
    that model's own PROVENANCE.md where it has one (which says where *it* started)."""
    if init_from == "none":
        return "random weights"
    where = BASE_DIR if init_from == "base" else Path(init_from)
    prov = where / "PROVENANCE.md"
    lines = prov.read_text().splitlines() if prov.exists() else []
    line = next((x for x in lines if x.startswith("Training:")), None)
    what = "the base model installed before it" if init_from == "base" else f"the model in `{where}`"
    return what if line is None else f"{what} ({line[len('Training: ') :].rstrip('.')})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "bench" / "results" / "corpora" / "pretrain")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--siamese", type=float, default=0.01)
    ap.add_argument("--augment", default="invariant", help="TrainConfig.augment [default: invariant]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--channels",
        default=None,
        help="the trunk's channels per stage, e.g. 32,64,128,256 [default: ModelConfig()'s 16,32,64,128]",
    )
    ap.add_argument(
        "--init-from",
        default="none",
        help="none (random weights), base (the base model installed now: train it further) or a model directory",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "base_model" / "pretrained")
    ap.add_argument("--quiet", action="store_true", help="no progress bar (a log, or a remote machine's output)")
    ap.add_argument("--install", action="store_true", help="copy the model into encoder/base_model/")
    ap.add_argument("--skip-training", action="store_true", help="install a model already trained into --out")
    args = ap.parse_args()
    from encoder import ModelConfig, TrainConfig, train

    if not args.skip_training:
        t0 = time.perf_counter()
        cfg = TrainConfig(
            epochs=args.epochs,
            siamese=args.siamese,
            augment=args.augment,
            patience=10**6,
            seed=args.seed,
            device=args.device,
            init_from=args.init_from,
        )
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / START).write_text(json.dumps({"init_from": args.init_from, "what": describe_start(args.init_from)}))
        channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
        shape = ModelConfig(channels=channels) if channels else ModelConfig()
        result = train(args.corpus, args.out, shape, cfg, progress=not args.quiet)
        print(f"trained {result.epochs_run} epochs on {result.images} images in {time.perf_counter() - t0:.0f} s")
    if args.install:
        BASE_DIR.mkdir(exist_ok=True)
        for name in ("model.safetensors", "config.json"):
            shutil.copyfile(args.out / name, BASE_DIR / name)
        (BASE_DIR / "PROVENANCE.md").write_text(provenance_md(args.corpus, args.out))
        shutil.copytree(args.corpus / "COPYRIGHT", BASE_DIR / "COPYRIGHT", dirs_exist_ok=True)
        print(f"installed into {BASE_DIR}")


if __name__ == "__main__":
    main()
