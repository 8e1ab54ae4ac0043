"""What the VLAD search vector costs next to the mean pooling, on the same weights (issue 18).

    .venv/bin/python bench/vlad_cost.py [--images 2000] [--rounds 3] [--out bench/results/vlad_cost.json]

One model of the default configuration (the shipped base model's weights), copied twice with its
pooling fitted on the same generated images: "mean" and "vlad". Measured side by side in one
process, alternating the arms each round (the machine is shared: ratios, not absolute figures):

- embedding throughput: ``Encoder.embed_pixels`` on N decoded 64-px images, batches of 32, one
  torch thread and two;
- one image's embedding latency (the upload query's share), median of 200;
- the fit itself: ``refit_search_vector`` on the N images (k-means words, projection, centring).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vlad_cost.json")
    args = ap.parse_args()
    import numpy as np
    import torch

    from encoder import Encoder
    from encoder.base import base_model_dir
    from encoder.search_vector import refit_search_vector

    rng = np.random.default_rng(0)
    # smooth random pictures (upsampled noise), so the local features are not all alike
    small = rng.integers(0, 256, (args.images, 8, 8, 3), dtype=np.uint8)
    pixels = np.ascontiguousarray(small.repeat(8, axis=1).repeat(8, axis=2))
    work = Path(tempfile.mkdtemp(prefix="vlad_cost-"))
    fit_s: dict[str, float] = {}
    encoders = {}
    for pooling in ("mean", "vlad"):
        d = work / pooling
        shutil.copytree(base_model_dir(), d, ignore=shutil.ignore_patterns("COPYRIGHT", "*.md"))
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        refit_search_vector(d, pixels, pooling=pooling, device="cpu")
        fit_s[pooling] = time.perf_counter() - t0
        encoders[pooling] = Encoder(d, device="cpu", batch_size=32)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rates: dict[str, list[float]] = {"mean": [], "vlad": []}
        for r in range(args.rounds):
            for pooling in ("mean", "vlad") if r % 2 == 0 else ("vlad", "mean"):
                t0 = time.perf_counter()
                encoders[pooling].embed_pixels(pixels)
                rates[pooling].append(len(pixels) / (time.perf_counter() - t0))
        lat: dict[str, float] = {}
        for pooling in ("mean", "vlad"):
            one = pixels[:1]
            times = []
            for _ in range(200):
                t0 = time.perf_counter()
                encoders[pooling].embed_pixels(one)
                times.append(time.perf_counter() - t0)
            lat[pooling] = statistics.median(times) * 1000
        row = {
            "threads": threads,
            "images_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
            "one_image_ms": {k: round(v, 2) for k, v in lat.items()},
        }
        row["throughput_ratio_vlad_over_mean"] = round(row["images_per_s"]["vlad"] / row["images_per_s"]["mean"], 3)
        rows.append(row)
    shutil.rmtree(work, ignore_errors=True)
    print(f"fit on {args.images} images: mean {fit_s['mean']:.1f} s, vlad {fit_s['vlad']:.1f} s (2 threads)")
    print("| threads | mean images/s | VLAD images/s | VLAD / mean | one image, mean (ms) | one image, VLAD (ms) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['images_per_s']['mean']:.0f} | {r['images_per_s']['vlad']:.0f} | "
            f"{r['throughput_ratio_vlad_over_mean']:.2f} | {r['one_image_ms']['mean']:.2f} | "
            f"{r['one_image_ms']['vlad']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"images": args.images, "rounds": args.rounds, "fit_seconds": fit_s, "rows": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
