"""The pretraining corpus as the trainer sees it, small enough to carry to a GPU machine.

    .venv/bin/python bench/pretrain_pack.py [--corpus bench/results/corpora/pretrain]
        [--out bench/results/corpora/pretrain64] [--size 64]

Training decodes every image once, letterboxed to the model's input size, and trains on those
pixels only (the augmentations work on the decoded tensors: encoder/augment.py). So a folder of
those decoded images, stored losslessly, trains exactly as the original corpus does, and at
64 px it is 37.8 MB (37.0 MiB) in lossless WebP, measured, against the corpus's 222 MB: it fits under the 64 MiB
that goes to the lent GPU machine with the working tree (bench/gpu_pretrain.sh).

Each image is decoded with the product's own decoder (``load_image``, the trainer's pixel cap)
and written to ``OUT/<its path>.webp`` (the original suffix kept in the name, so two files that
differ only in suffix stay two and the order of the files is the corpus's). Every written file is
decoded again the way training will decode it and compared with the original's pixels; a
mismatch stops the run. Images the decoder refuses are left out and listed, as training would
skip them. ``provenance.json`` and ``COPYRIGHT/`` are copied along, and ``pack.json`` says what
the folder is. Nothing is written over: an existing ``--out`` is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pack(corpus: Path, out: Path, size: int) -> dict[str, Any]:
    """Write the decoded corpus to `out`; return what pack.json records."""
    import numpy as np
    from PIL import Image

    from encoder.errors import ImageLoadError
    from encoder.image_files import find_images
    from encoder.images import DEFAULT_MAX_PIXELS, load_image

    if out.exists():
        raise SystemExit(f"{out} exists: remove it first")
    files = find_images(corpus)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    skipped: list[dict[str, str]] = []
    written = total = 0
    for i, path in enumerate(files):
        try:
            pixels = load_image(path, size, max_pixels=DEFAULT_MAX_PIXELS)
        except ImageLoadError as exc:
            skipped.append({"path": str(path.relative_to(corpus)), "error": str(exc)})
            continue
        dest = tmp / (str(path.relative_to(corpus)) + ".webp")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(dest, "WEBP", lossless=True, method=6)
        again = load_image(dest, size, max_pixels=DEFAULT_MAX_PIXELS)
        if not np.array_equal(again, pixels):
            raise SystemExit(f"{dest}: decodes to other pixels than {path} ({np.abs(again - pixels).max()} at most)")
        written += 1
        total += dest.stat().st_size
        if (i + 1) % 2000 == 0:
            print(f"{i + 1:,} / {len(files):,} images, {total / 1e6:.1f} MB", flush=True)
    for name in ("provenance.json", "COPYRIGHT"):
        src = corpus / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src.exists():
            shutil.copyfile(src, tmp / name)
    info = {
        "what": f"{corpus.name}, each image decoded and letterboxed to {size} px by encoder.images.load_image, "
        "stored as lossless WebP (bench/pretrain_pack.py)",
        "source": str(corpus),
        "size": size,
        "images": written,
        "bytes": total,
        "skipped": skipped,
    }
    (tmp / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    tmp.rename(out)  # the finished pack appears at once, or not at all
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=REPO / "bench" / "results" / "corpora" / "pretrain")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "corpora" / "pretrain64")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    t0 = time.perf_counter()
    info = pack(args.corpus, args.out, args.size)
    print(
        f"{info['images']:,} images, {info['bytes'] / 1e6:.1f} MB, {len(info['skipped'])} skipped, "
        f"in {time.perf_counter() - t0:.0f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
