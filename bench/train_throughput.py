"""Training throughput: images/s and epoch time of the convolutional autoencoder.

Measures, in one run on the best available device:
- the bare training step (random uint8 batch already on the device, the model's
  forward + backward + AdamW step) at several input sizes: the model's ceiling;
- the full `encoder.train` loop on a generated folder (decode cache, augmentation,
  validation, checkpointing included): what a user sees.

    .venv/bin/python bench/train_throughput.py [--sizes 64,128] [--batch 256] [--images 2000]

Prints a table and writes bench/results/train_throughput.json. On one H100 the
target is >= 30,000 training images/s at 128x128 (bf16 autocast, channels-last).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from encoder import ModelConfig, TrainConfig, create_model, train  # noqa: E402
from encoder.augment import augment_batch  # noqa: E402
from encoder.device import pick_device  # noqa: E402


def step_throughput(size: int, batch: int, device: torch.device, steps: int, compile_model: bool) -> dict:
    """Images/s of the bare training step at `size` x `size`."""
    torch.manual_seed(0)
    model = create_model("conv", image_size=size).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cache = torch.randint(0, 256, (batch * 4, 3, size, size), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def step(i: int) -> None:
        x = cache[(i % 4) * batch : (i % 4 + 1) * batch].float().div_(255)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        inp, target = augment_batch(x, "invariant", gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _, _ = (model._orig_mod if compile_model else model).training_loss(inp, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):  # warm-up: cuDNN autotuning, allocator, compilation
        step(i)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"size": size, "batch": batch, "steps": steps, "seconds": dt, "images_per_s": steps * batch / dt}


def make_folder(root: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        d = root / f"c{i % 8}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{i:05d}.jpg", quality=85)
    return root


def full_loop(n: int, device: torch.device, epochs: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "imgs", n)
        t0 = time.perf_counter()
        result = train(
            folder,
            Path(tmp) / "model",
            ModelConfig(),
            TrainConfig(epochs=epochs, batch_size=batch, device=str(device), patience=99),
            progress=False,
        )
        wall = time.perf_counter() - t0
        log = json.loads((Path(tmp) / "model" / "train_log.json").read_text())
    epoch_s = [h["seconds"] for h in result.history]
    return {
        "images": n,
        "epochs": epochs,
        "batch": batch,
        "decode_seconds": log["decode_seconds"],
        "median_epoch_seconds": float(np.median(epoch_s)),
        "train_images_per_s": result.images_per_second,
        "wall_seconds": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per size (default: 50 CUDA, 5 CPU)")
    ap.add_argument("--images", type=int, default=None, help="images for the full loop (default 20000 CUDA, 600 CPU)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_throughput.json"))
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (256 if cuda else 32)
    steps = args.steps or (50 if cuda else 5)
    n_images = args.images or (20000 if cuda else 600)
    machine = {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        rows.append({"mode": "eager", **step_throughput(size, batch, device, steps, False)})
        if args.compile:
            rows.append({"mode": "compiled", **step_throughput(size, batch, device, steps, True)})
    loop = full_loop(n_images, device, args.epochs, batch)
    print(f"\nmachine: {machine['device']}, torch {machine['torch']}")
    print(f"{'step':<10}{'size':>6}{'batch':>7}{'images/s':>12}")
    for r in rows:
        print(f"{r['mode']:<10}{r['size']:>6}{r['batch']:>7}{r['images_per_s']:>12,.0f}")
    print(
        f"\nfull train loop, {loop['images']} images at {ModelConfig().image_size}px: decode cache "
        f"{loop['decode_seconds']:.1f} s, median epoch {loop['median_epoch_seconds']:.2f} s, "
        f"{loop['train_images_per_s']:,.0f} images/s"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "steps": rows, "full_loop": loop}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
