"""Channels-last against the plain NCHW layout on the CPU (encoder/device.py ``conv_layout``).

    .venv/bin/python bench/layout_speed.py [--folder data] [--rounds 2] [--out bench/results/layout_speed.json]

Both layouts in one process, the arms alternating each round (the machine is shared: read the
ratios, not the absolute figures), switched by ``encoder.device.CHANNELS_LAST``:

- embedding: ``Encoder.embed_pixels`` of the folder's decoded images with the shipped base
  model refitted on them with VLAD (the default search vector), one torch thread and two;
- a bare training step of the default model (augmentation, forward, backward, AdamW; batch 32,
  two threads);
- a first run's training, ``encoder.train`` with the product's defaults (the base model
  fine-tuned on the folder, then the search vector fitted): wall seconds, training images/s
  and the best validation loss (the same to rounding in both layouts).

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, command_line, describe_machine, machine, table, write_json

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARMS = ("plain", "channels_last")


def _set(arm: str) -> None:
    import encoder.device

    encoder.device.CHANNELS_LAST = arm == "channels_last"


def _order(r: int) -> tuple[str, ...]:
    return ARMS if r % 2 == 0 else ARMS[::-1]


def embedding(pixels, rounds: int, work: Path) -> list[dict]:
    """Images/s of ``Encoder.embed_pixels`` in each layout, at 1 and 2 torch threads."""
    import torch

    from encoder import Encoder
    from encoder.base import base_model_dir
    from encoder.search_vector import refit_search_vector

    model = work / "vlad-model"
    shutil.copytree(base_model_dir(), model, ignore=shutil.ignore_patterns("COPYRIGHT", "*.md"))
    refit_search_vector(model, pixels, pooling="vlad", device="cpu")
    encoders = {}
    for arm in ARMS:
        _set(arm)
        encoders[arm] = Encoder(model, device="cpu")
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for r in range(rounds + 1):
            for arm in _order(r):
                t0 = time.perf_counter()
                encoders[arm].embed_pixels(pixels)
                if r:  # round 0 warms both up
                    rates[arm].append(len(pixels) / (time.perf_counter() - t0))
        rows.append({"what": f"embed_pixels, VLAD, {threads} thread(s)", **_ratio(rates, "images/s")})
    return rows


def training_step(rounds: int, steps: int = 8) -> dict:
    """Images/s of the bare training step of the default model in each layout, 2 threads."""
    import torch

    from encoder import ModelConfig, create_model
    from encoder.augment import augment_batch
    from encoder.device import conv_layout

    torch.set_num_threads(2)
    cpu = torch.device("cpu")
    batch = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    runs = {}
    for arm in ARMS:
        _set(arm)
        torch.manual_seed(0)
        layout = conv_layout(cpu)
        model = create_model(ModelConfig()).to(memory_format=layout)
        runs[arm] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), torch.Generator().manual_seed(0), layout)

    def step(arm: str) -> None:
        model, opt, gen, layout = runs[arm]
        x = batch.float().div_(255).contiguous(memory_format=layout)
        inp, target = augment_batch(x, "invariant", gen)
        loss, _, _ = model.training_loss(inp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(rounds + 1):
        for arm in _order(r):
            t0 = time.perf_counter()
            for _ in range(steps):
                step(arm)
            if r:
                rates[arm].append(steps * len(batch) / (time.perf_counter() - t0))
    return {"what": "training step, default model, batch 32, 2 threads", **_ratio(rates, "images/s")}


def first_training(folder: Path, rounds: int, work: Path) -> list[dict]:
    """``encoder.train`` with the product's defaults on `folder`, each layout `rounds` times."""
    import torch

    from encoder import ModelConfig, TrainConfig, train

    torch.set_num_threads(2)
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    speed: dict[str, list[float]] = {arm: [] for arm in ARMS}
    val: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm in _order(r):
            _set(arm)
            out = work / f"train-{arm}-{r}"
            t0 = time.perf_counter()
            result = train(folder, out, ModelConfig(), TrainConfig(), progress=False)
            wall[arm].append(time.perf_counter() - t0)
            speed[arm].append(result.images_per_second)
            val[arm].append(result.best_val_loss)
            shutil.rmtree(out, ignore_errors=True)
            print(f"  train, {arm}, round {r}: {wall[arm][-1]:.1f} s, {speed[arm][-1]:.0f} images/s", flush=True)
    return [
        {"what": f"first run's training on {folder.name}/, wall", **_ratio(wall, "s", lower_is_better=True)},
        {"what": f"first run's training on {folder.name}/, training", **_ratio(speed, "images/s")},
        {"what": f"first run's training on {folder.name}/, best val loss", **_ratio(val, "loss", lower_is_better=True)},
    ]


def _ratio(values: dict[str, list[float]], unit: str, lower_is_better: bool = False) -> dict:
    med = {arm: statistics.median(v) for arm, v in values.items()}
    gain = med["plain"] / med["channels_last"] if lower_is_better else med["channels_last"] / med["plain"]
    return {"unit": unit, "runs": values, "plain": med["plain"], "channels_last": med["channels_last"], "gain": gain}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=REPO / "data", help="image folder (default: the sample corpus)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each arm (alternating order)")
    ap.add_argument("--no-train", action="store_true", help="skip the first run's training (the slow part)")
    ap.add_argument("--out", type=Path, default=RESULTS / "layout_speed.json")
    args = ap.parse_args()

    from encoder import ModelConfig
    from encoder.decoding import decode_to_array
    from encoder.image_files import find_images

    m = machine()
    pixels, ok, _ = decode_to_array(find_images(args.folder), ModelConfig().image_size)
    print(f"{len(ok)} images from {args.folder}; {describe_machine(m)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="layout_speed-"))
    try:
        rows = embedding(pixels, args.rounds, work)
        rows.append(training_step(args.rounds))
        if not args.no_train:
            rows += first_training(args.folder, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    cells = [
        (r["what"], r["unit"], f"{r['plain']:,.4g}", f"{r['channels_last']:,.4g}", f"{r['gain']:.2f}x") for r in rows
    ]
    print(table(cells, ["what", "unit", "plain (NCHW)", "channels-last", "gain"]))
    out = write_json(
        args.out, {"command": command_line(), "machine": m, "folder": str(args.folder), "images": len(ok), "rows": rows}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
