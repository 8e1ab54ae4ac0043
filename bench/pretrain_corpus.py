"""The pretraining corpus of the shipped base model (issue 18 item 2): artwork of Debian game and icon packages.

    .venv/bin/python bench/pretrain_corpus.py [--out DIR] [--debs DIR] [--per-package 4000] [--seed 0]

Every package is fetched with ``apt-get download`` (or taken from ``--debs``) and unpacked with
``dpkg-deb -x``: nothing is installed. From each, the PNG and JPEG files are taken, and:

- images under 24 px on either side are dropped (cursors, bullets, 1-px borders), and so are
  byte-identical files;
- an icon theme ships each icon at many sizes: one file per icon name is kept, the size nearest
  64 px (the model's input), so the same drawing is not seen six times;
- a large picture (short side >= 512 px: backgrounds, textures, sprite sheets) also gives four
  crops of half its size at seeded random places, which the model sees at 64 px as close-ups;
- every image is scaled to at most 256 px on its long side (the model reads 64 px; smaller files
  decode faster) and written as PNG, alpha kept;
- a package with more than ``--per-package`` images is cut to a seeded random sample, so no one
  style dominates.

Under ``--out`` (default ``bench/results/corpora/pretrain/``, ignored by git): ``<package>/...png``,
``provenance.json`` (package, version, .deb SHA-256, licences, counts) and
``COPYRIGHT/<package>`` (the package's copyright file as shipped).

Disjoint on purpose from every evaluation corpus (tuxpaint-stamps, the five wallpaper packages of
``wallpapers/``, the oxygen, gnome and elementary-xfce icon themes, MNIST) and from the sets kept
for independent checks (openclipart, the MATE backgrounds, emoji sets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icon_corpora import deb_fields, fetch_deb, licences  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "corpora" / "pretrain"

#: (package, kind): "icons" keeps one size per icon name; "art" keeps every distinct file.
PACKAGES: tuple[tuple[str, str], ...] = (
    ("wesnoth-1.16-data", "art"),  # painted portraits, unit sprites, terrain
    ("flare-game", "art"),  # painted tiles, items, portraits
    ("supertux-data", "art"),  # cartoon sprites and painted backgrounds
    ("freeciv-data", "art"),  # map tiles, units, flags
    ("frozen-bubble-data", "art"),
    ("lincity-ng-data", "art"),  # isometric buildings
    ("pingus-data", "art"),
    ("neverball-data", "art"),  # textures and backgrounds
    ("extremetuxracer-data", "art"),  # textures, sky boxes
    ("minetest-data", "art"),  # block textures
    ("desktop-base", "art"),  # Debian's own artwork
    ("xfdesktop4-data", "art"),  # Xfce backgrounds
    ("faenza-icon-theme", "icons"),
    ("moka-icon-theme", "icons"),
    ("paper-icon-theme", "icons"),
)
MIN_SIDE = 24
MAX_SIDE = 256
CROP_FROM = 512  # short side at which a picture also gives crops
CROPS = 4


def _images(tree: Path) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg"}
    return sorted(p for p in tree.rglob("*") if p.suffix.lower() in exts and p.is_file() and not p.is_symlink())


def _one_per_icon(paths: list[Path], sizes: dict[Path, tuple[int, int]]) -> list[Path]:
    """Icon themes: of each icon name (theme + file name), the file whose size is nearest 64 px."""
    by_name: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for p in paths:
        theme = p.parts[p.parts.index("icons") + 1] if "icons" in p.parts else ""
        by_name[(theme, p.name)].append(p)
    return sorted(min(group, key=lambda q: (abs(min(sizes[q]) - 64), -min(sizes[q]))) for group in by_name.values())


def build_package(
    package: str, kind: str, debs: Path | None, dest: Path, per_package: int, seed: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lookalike-pretrain-") as tmp:
        deb = fetch_deb(package, debs, Path(tmp))
        fields = deb_fields(deb)
        tree = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        copyright_file = tree / "usr" / "share" / "doc" / package / "copyright"
        copyright_text = copyright_file.read_text(errors="replace") if copyright_file.exists() else ""
        sizes: dict[Path, tuple[int, int]] = {}
        seen_bytes: set[str] = set()
        dropped = {"small": 0, "unreadable": 0, "byte_copies": 0}
        for p in _images(tree):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen_bytes:
                dropped["byte_copies"] += 1
                continue
            seen_bytes.add(digest)
            try:
                with Image.open(p) as im:
                    size = im.size
            except Exception:
                dropped["unreadable"] += 1
                continue
            if min(size) < MIN_SIDE:
                dropped["small"] += 1
                continue
            sizes[p] = size
        kept = _one_per_icon(list(sizes), sizes) if kind == "icons" else sorted(sizes)
        rng = random.Random(f"{seed}:{package}")
        jobs: list[tuple[Path, tuple[int, int, int, int] | None]] = []
        for p in kept:
            jobs.append((p, None))
            w, h = sizes[p]
            if min(w, h) >= CROP_FROM:
                cw, ch = w // 2, h // 2
                for _ in range(CROPS):
                    x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
                    jobs.append((p, (x, y, x + cw, y + ch)))
        if len(jobs) > per_package:
            jobs = sorted(rng.sample(jobs, per_package), key=lambda j: (str(j[0]), j[1] or ()))
        out = dest / package
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        written = 0
        for i, (p, box) in enumerate(jobs):
            try:
                with Image.open(p) as im:
                    im = im.convert("RGBA")
                    if box:
                        im = im.crop(box)
                    im.thumbnail((MAX_SIDE, MAX_SIDE))
                    im.save(out / f"{i:05d}.png")
                    written += 1
            except Exception:
                dropped["unreadable"] += 1
        (dest / "COPYRIGHT").mkdir(exist_ok=True)
        (dest / "COPYRIGHT" / package).write_text(copyright_text)
        main, every = licences(copyright_text)
        return {
            "package": package,
            "version": fields.get("Version", ""),
            "kind": kind,
            "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
            "licence": main,
            "licences": every,
            "files_found": len(sizes) + sum(dropped.values()),
            "kept_files": len(kept),
            "images": written,
            "dropped": dropped,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--debs", type=Path, default=None, help="a folder of already downloaded .deb files")
    ap.add_argument("--per-package", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for package, kind in PACKAGES:
        info = build_package(package, kind, args.debs, args.out, args.per_package, args.seed)
        rows.append(info)
        print(f"{package:24s} {info['images']:6d} images  {info['licence']}", flush=True)
    prov = {
        "packages": rows,
        "images": sum(r["images"] for r in rows),
        "seed": args.seed,
        "per_package": args.per_package,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"{prov['images']} images in {prov['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
