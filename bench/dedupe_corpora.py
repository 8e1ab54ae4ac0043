"""Labelled near-duplicate corpora for bench/near_duplicates_cross.py (issue 13 item 3).

    from dedupe_corpora import build_all
    corpora = build_all(workdir, seed)   # {name: (folder, truth)}

Each corpus is a folder of images under ``<workdir>/<name>-s<seed>...`` (the parameters
are in the folder name) with a truth table beside it (``truth.json`` and ``truth.csv``),
built once and cached: a folder whose ``truth.json`` exists is reused as it is. Building
is deterministic for a given seed. Only the standard library, numpy and Pillow here, so
the corpora can be made without the product.

Truth: ``{relative path: {"family", "similar", "source", "edit", "variant"}}``.

- ``family``: images of one family are true duplicates of each other (an original and
  its edits; for the wallpapers, every crop/resolution of one picture of one tone).
- ``similar``: a looser family; equal to ``family`` except for the wallpapers, where
  the light and dark variants of one picture share ``similar`` but not ``family``
  (alike, but not duplicates: the "similar" tier may group them, the others must not).
- ``source``: the image an edit was made from (the image itself for an original).
- ``edit``: ``original``, one of :data:`EDITS`, or ``mirror-file`` (a Tux Paint
  ``*_mirror.png`` stamp, a flipped copy of another stamp that ships with the corpus).
- ``variant``: the wallpaper's variant from labels.csv (``light``, ``dark-1080x1920``...),
  and ``tone`` its tone (light or dark); empty elsewhere.

Corpora (:data:`CORPORA`):

- ``tuxpaint-edits``: `originals` stamps with every edit, all 11 ``*_mirror.png`` stamps
  and their sources, and `distractors` other stamps;
- ``wallpapers-edits``: every wallpaper (downscaled to <= 640 px) with every edit;
- ``many-duplicates``: 12 wallpapers of different groups with 9 edited copies each, and
  40 unrelated Tux Paint stamps (a photo folder with many duplicates);
- ``mnist``: `mnist` digits, no two of one family (every group is a false positive).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CORPORA_ROOT = REPO.parent / "shared" / "corpora"
TUXPAINT = CORPORA_ROOT / "tuxpaint"
WALLPAPERS = CORPORA_ROOT / "wallpapers"
MNIST = CORPORA_ROOT / "mnist"

CORPORA = ("tuxpaint-edits", "wallpapers-edits", "many-duplicates", "mnist")
#: Every generated edit. Resizes by Lanczos; JPEG q30/q60 of the image composited on
#: white; a random window without 8-10% of each side; brightness x0.8, x1.25;
#: greyscale; a horizontal mirror. Alpha is kept where the source has it.
EDITS = ("resize50", "resize25", "jpeg30", "jpeg60", "crop", "bright80", "bright125", "grey", "mirror")
#: The edits whose recall the issue's target (>= 0.90) is about; grey and mirror are reported apart.
CORE_EDITS = ("resize50", "resize25", "jpeg30", "jpeg60", "crop", "bright80", "bright125")
WALLPAPER_MAX_SIDE = 640
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------- edits


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info


def on_white(img):
    """The image as RGB, composited on white (as every decoder of the product does)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def make_edit(src: Path, edit: str, dst_stem: Path, rng: np.random.Generator) -> Path:
    """Write `edit` of `src` next to `dst_stem` (suffix added: the source's format, or
    .jpg for the JPEG edits). Returns the file written."""
    from PIL import Image, ImageEnhance, ImageOps

    with Image.open(src) as im:
        im.load()
        img = ImageOps.exif_transpose(im)
        alpha = _has_alpha(im)
    img = img.convert("RGBA" if alpha else "RGB")
    jpeg_source = src.suffix.lower() in (".jpg", ".jpeg")
    w, h = img.size
    if edit.startswith("jpeg"):
        path = dst_stem.with_suffix(".jpg")
        on_white(img).save(path, "JPEG", quality=int(edit[4:]))
        return path
    if edit.startswith("resize"):
        f = int(edit[6:]) / 100
        out = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    elif edit == "crop":
        frac = float(rng.uniform(0.08, 0.10))  # the share of each side cut away, at a random place
        cw, ch = max(1, round(w * (1 - frac))), max(1, round(h * (1 - frac)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out = img.crop((x0, y0, x0 + cw, y0 + ch))
    elif edit.startswith("bright"):
        f = int(edit[6:]) / 100
        rgb = ImageEnhance.Brightness(img.convert("RGB")).enhance(f)
        out = Image.merge("RGBA", (*rgb.split(), img.getchannel("A"))) if alpha else rgb
    elif edit == "grey":
        g = ImageOps.grayscale(img.convert("RGB"))
        out = Image.merge("LA", (g, img.getchannel("A"))) if alpha else g
    elif edit == "mirror":
        out = ImageOps.mirror(img)
    else:
        raise ValueError(f"unknown edit {edit!r}")
    if jpeg_source:  # a photo stays a JPEG (high quality: the edit is the point, not the compression)
        path = dst_stem.with_suffix(".jpg")
        out.convert("L" if out.mode in ("L", "LA") else "RGB").save(path, "JPEG", quality=92)
    else:
        path = dst_stem.with_suffix(".png")
        out.save(path, "PNG")
    return path


def add_edits(
    folder: Path,
    src_rel: str,
    rng: np.random.Generator,
    truth: dict[str, dict[str, Any]],
    edits: tuple[str, ...] = EDITS,
) -> None:
    """Add every edit of the image `src_rel` (relative to `folder`) under folder/edits/, named
    ``<source path>__<edit>.<ext>``; its truth copies the source's family."""
    base = truth[src_rel]
    stem = Path(src_rel).with_suffix("")
    for edit in edits:
        dst = folder / "edits" / f"{stem.as_posix()}__{edit}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        path = make_edit(folder / src_rel, edit, dst, rng)
        truth[path.relative_to(folder).as_posix()] = {**base, "source": src_rel, "edit": edit}


def _entry(
    family: str, similar: str | None = None, source: str = "", edit: str = "original", variant: str = "", tone: str = ""
) -> dict[str, Any]:
    return {
        "family": family,
        "similar": similar or family,
        "source": source,
        "edit": edit,
        "variant": variant,
        "tone": tone,
    }


# ---------------------------------------------------------------- sources


def _images(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def tuxpaint_stamps(root: Path = TUXPAINT) -> tuple[list[str], dict[str, str]]:
    """(every stamp, {mirror stamp: the stamp it flips})."""
    files = _images(root)
    have = set(files)
    mirrors = {}
    for rel in files:
        p = Path(rel)
        if p.stem.endswith("_mirror"):
            src = (p.parent / (p.stem[: -len("_mirror")] + p.suffix)).as_posix()
            if src in have:
                mirrors[rel] = src
    return files, mirrors


def wallpaper_rows(root: Path = WALLPAPERS) -> list[dict[str, str]]:
    """labels.csv rows (path, group, variant, ...), each with its tone: dark or light."""
    with open(root / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (root / r["path"]).is_file()]
    for r in rows:
        v = r.get("variant", "").lower()
        dark = v == "dark" or v.startswith("dark") or "images_dark" in r["path"]
        r["tone"] = "dark" if dark else "light"
    return rows


def _copy_downscaled(src: Path, dst: Path, max_side: int = WALLPAPER_MAX_SIDE) -> None:
    from PIL import Image, ImageOps

    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale directly
        img = ImageOps.exif_transpose(im).convert("RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img.save(dst, "JPEG", quality=92)


# ---------------------------------------------------------------- corpora


def _tuxpaint_edits(folder: Path, seed: int, originals: int, distractors: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    files, mirrors = tuxpaint_stamps()
    plain = [f for f in files if f not in mirrors]
    chosen = [plain[i] for i in sorted(rng.choice(len(plain), size=min(originals, len(plain)), replace=False))]
    keep = set(chosen) | set(mirrors) | set(mirrors.values())
    rest = [f for f in files if f not in keep]
    extra = [rest[i] for i in sorted(rng.choice(len(rest), size=min(distractors, len(rest)), replace=False))]
    truth: dict[str, dict[str, Any]] = {}
    for rel in sorted(keep | set(extra)):
        dst = folder / "orig" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TUXPAINT / rel, dst)
        if rel in mirrors:
            src = "orig/" + mirrors[rel]
            truth["orig/" + rel] = _entry(mirrors[rel], source=src, edit="mirror-file")
        else:
            truth["orig/" + rel] = _entry(rel, source="orig/" + rel)
    for rel in chosen:
        add_edits(folder, "orig/" + rel, rng, truth)
    return truth


def _wallpapers_edits(folder: Path, seed: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, Any]] = {}
    rows = wallpaper_rows()
    for r in rows:
        rel = "orig/" + Path(r["path"]).with_suffix(".jpg").as_posix()
        _copy_downscaled(WALLPAPERS / r["path"], folder / rel)
        truth[rel] = _entry(f"{r['group']}|{r['tone']}", r["group"], rel, "original", r["variant"], r["tone"])
    for rel in sorted(truth):
        add_edits(folder, rel, rng, truth)
    return truth


def _many_duplicates(folder: Path, seed: int, pictures: int = 12, drawings: int = 40) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, Any]] = {}
    by_group: dict[str, list[dict[str, str]]] = {}
    for r in wallpaper_rows():
        by_group.setdefault(r["group"], []).append(r)
    groups = sorted(by_group)
    for gi in sorted(rng.choice(len(groups), size=min(pictures, len(groups)), replace=False)):
        rows = by_group[groups[gi]]
        light = [r for r in rows if r["tone"] == "light"] or rows
        r = light[int(rng.integers(len(light)))]
        rel = "photos/" + Path(r["path"]).with_suffix(".jpg").as_posix()
        _copy_downscaled(WALLPAPERS / r["path"], folder / rel)
        truth[rel] = _entry(f"{r['group']}|{r['tone']}", r["group"], rel, "original", r["variant"], r["tone"])
    for rel in sorted(truth):
        add_edits(folder, rel, rng, truth)
    files, mirrors = tuxpaint_stamps()
    plain = [f for f in files if f not in mirrors and f not in set(mirrors.values())]
    for i in sorted(rng.choice(len(plain), size=min(drawings, len(plain)), replace=False)):
        rel = "drawings/" + plain[i]
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TUXPAINT / plain[i], folder / rel)
        truth[rel] = _entry(plain[i], source=rel)
    return truth


def _mnist(folder: Path, seed: int, count: int) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    files = _images(MNIST)
    truth: dict[str, dict[str, Any]] = {}
    for i in sorted(rng.choice(len(files), size=min(count, len(files)), replace=False)):
        rel = files[i]
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MNIST / rel, folder / rel)
        truth[rel] = _entry(rel, source=rel)
    return truth


def corpus_dirname(name: str, seed: int, originals: int = 150, distractors: int = 250, mnist: int = 2000) -> str:
    if name == "tuxpaint-edits":
        return f"{name}-s{seed}-o{originals}-d{distractors}"
    if name == "mnist":
        return f"{name}-s{seed}-n{mnist}"
    return f"{name}-s{seed}"


def file_hashes(folder: Path, paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha1((folder / p).read_bytes()).hexdigest() for p in paths}


def merge_identical(truth: dict[str, dict[str, Any]]) -> None:
    """Byte-identical files are duplicates whatever their labels say (Tux Paint ships one
    stamp in two categories): merge their families (and `similar`), in place."""

    def find(parent: dict[str, str], x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for key in ("family", "similar"):
        parent: dict[str, str] = {}
        first: dict[str, str] = {}
        for p in sorted(truth):
            h, f = truth[p]["sha1"], find(parent, truth[p][key])
            if h in first and find(parent, first[h]) != f:
                a, b = sorted((find(parent, first[h]), f))
                parent[b] = a
            first.setdefault(h, f)
        for v in truth.values():
            v[key] = find(parent, v[key])


def build_corpus(
    name: str, workdir: str | Path, seed: int = 0, *, originals: int = 150, distractors: int = 250, mnist: int = 2000
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Build (or reuse) one corpus. Returns (the folder of images, the truth table).

    The images live in ``<dir>/images``, the truth in ``<dir>/truth.json`` (written last:
    a folder without it is rebuilt from scratch) and ``<dir>/truth.csv``. Each entry
    also records ``sha1``, the file's content hash (byte-identical files are exact duplicates)."""
    base = Path(workdir) / corpus_dirname(name, seed, originals, distractors, mnist)
    folder, done = base / "images", base / "truth.json"
    if done.exists():
        return folder, json.loads(done.read_text())
    shutil.rmtree(base, ignore_errors=True)
    folder.mkdir(parents=True)
    if name == "tuxpaint-edits":
        truth = _tuxpaint_edits(folder, seed, originals, distractors)
    elif name == "wallpapers-edits":
        truth = _wallpapers_edits(folder, seed)
    elif name == "many-duplicates":
        truth = _many_duplicates(folder, seed)
    elif name == "mnist":
        truth = _mnist(folder, seed, mnist)
    else:
        raise ValueError(f"unknown corpus {name!r}: one of {', '.join(CORPORA)}")
    for p, h in file_hashes(folder, sorted(truth)).items():
        truth[p]["sha1"] = h
    merge_identical(truth)
    with open(base / "truth.csv", "w", newline="") as fh:
        cols = ["path", "family", "similar", "source", "edit", "variant", "tone", "sha1"]
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for p in sorted(truth):
            w.writerow({"path": p, **truth[p]})
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    tmp.replace(done)
    return folder, truth


def build_all(
    workdir: str | Path,
    seed: int = 0,
    corpora: tuple[str, ...] | list[str] = CORPORA,
    *,
    originals: int = 150,
    distractors: int = 250,
    mnist: int = 2000,
) -> dict[str, tuple[Path, dict[str, dict[str, Any]]]]:
    """Every corpus asked for: ``{name: (folder, truth)}`` (see :func:`build_corpus`)."""
    return {
        name: build_corpus(name, workdir, seed, originals=originals, distractors=distractors, mnist=mnist)
        for name in corpora
    }


if __name__ == "__main__":  # build them, and say what was built
    import argparse
    import time

    ap = argparse.ArgumentParser(description="build the near-duplicate corpora")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "results" / "near_duplicates_cross")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpora", default=",".join(CORPORA))
    args = ap.parse_args()
    for name in args.corpora.split(","):
        t0 = time.perf_counter()
        folder, truth = build_corpus(name, args.workdir, args.seed)
        edits: dict[str, int] = {}
        for v in truth.values():
            edits[v["edit"]] = edits.get(v["edit"], 0) + 1
        fams = len({v["family"] for v in truth.values()})
        print(f"{name}: {len(truth)} images, {fams} families, {edits} in {time.perf_counter() - t0:.1f} s -> {folder}")
