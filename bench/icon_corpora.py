"""Labelled icon corpora from Debian icon themes, for ``lookalike evaluate`` (issue 18 item 1).

    .venv/bin/python bench/icon_corpora.py [--corpora oxygen,gnome,elementary,nuovext,yaru] [--out DIR]
        [--debs DIR] [--max-images 3000] [--min-per-label 10] [--seed 0]

Each corpus is one icon theme, in its own artistic style, labelled by the icon's
*context* (the theme folder it lives in: apps, places, mimetypes, devices, status,
actions, ...). The package is fetched with ``apt-get download`` (or taken from
``--debs``, a folder of already downloaded ``.deb`` files) and unpacked with
``dpkg-deb -x``: nothing is installed.

Per corpus, under ``--out`` (default ``bench/results/corpora/<name>/``, ignored by git):

- ``<label>/<icon>.png``: the images, one folder per context, so ``lookalike evaluate
  FOLDER`` takes the folder as the label;
- ``labels.csv``: ``path,label,family,package,version,source,aliases``; ``family`` is a finer
  label, the icon name's first word (``folder-music`` -> ``folder``), usable with
  ``--label-column family``;
- ``provenance.json`` and ``PROVENANCE.md``: package, version, licence(s), the .deb's
  SHA-256, what was kept and dropped; ``COPYRIGHT``: the package's
  ``/usr/share/doc/PKG/copyright`` as shipped.

Icons are taken at one size per theme (48 px). Symlinked aliases are resolved and each
real file kept once (its label: the context it really lives in); byte-identical files are
kept once; contexts with fewer than ``--min-per-label`` images are dropped; a corpus above
``--max-images`` is cut to a seeded random sample. A summary table is printed and
``<out>/corpora.json`` written. The same packages and seed give the same corpora.

Not used, on purpose (kept for independent checks, issue 18): openclipart, the MATE
backgrounds, any emoji set.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "corpora"


@dataclass(frozen=True)
class Theme:
    package: str
    #: the theme's root inside the package, under which ``<size>/<context>/`` or ``<context>/<size>/``
    root: str
    #: the size folder to take (``48x48`` or ``48``, as the theme spells it)
    size: str
    style: str


#: Five styles: KDE's glossy Oxygen, GNOME 2's Tango-style theme, Xfce's flat elementary, LXDE's
#: glossy nuoveXT, Ubuntu's flat Yaru.
THEMES: dict[str, Theme] = {
    "oxygen": Theme(
        "oxygen-icon-theme", "usr/share/icons/oxygen/base", "48x48", "KDE Oxygen: glossy, photo-like shading"
    ),
    "gnome": Theme(
        "gnome-icon-theme", "usr/share/icons/gnome", "48x48", "GNOME 2 (Tango guidelines): outlined, gradients"
    ),
    "elementary": Theme(
        "elementary-xfce-icon-theme", "usr/share/icons/elementary-xfce", "48", "elementary (Xfce): flat, rounded"
    ),
    # nuovext and yaru: added in stop 32 as corpora never looked at before, to confirm a change chosen on the others
    "nuovext": Theme("lxde-icon-theme", "usr/share/icons/nuoveXT2", "48x48", "LXDE nuoveXT 2: bright, glossy, rounded"),
    "yaru": Theme("yaru-theme-icon", "usr/share/icons/Yaru", "48x48", "Ubuntu's Yaru: flat, Suru-style"),
}

SIZE_DIR = re.compile(r"^\d+(x\d+)?(@\d+x?)?$")


@dataclass
class Icon:
    """One real image file of a theme, with its label and the alias names that point at it."""

    label: str
    name: str  # file name without .png
    real: Path
    aliases: list[str] = field(default_factory=list)  # "<context>/<name>" of the symlinks to it

    @property
    def family(self) -> str:
        return family_of(self.name)


def family_of(name: str) -> str:
    """The icon name's first word: ``folder-music`` -> ``folder``, ``x-office-document`` -> ``office``."""
    words = [w for w in re.split(r"[-_.]", name.lower()) if w]
    if len(words) > 1 and words[0] in ("x", "gnome", "kde", "xfce", "stock", "gtk"):
        words = words[1:]
    return words[0] if words else name


def _context_of(rel_dir: Path) -> str | None:
    """A folder's context (relative to the theme root); None unless ``size/context`` or ``context/size``."""
    parts = rel_dir.parts
    if len(parts) != 2:
        return None
    a, b = parts
    if SIZE_DIR.match(a) and not SIZE_DIR.match(b):
        return b
    if SIZE_DIR.match(b) and not SIZE_DIR.match(a):
        return a
    return None


def collect_icons(theme_root: Path, size: str) -> tuple[list[Icon], dict[str, int]]:
    """The theme's PNGs of one size, one :class:`Icon` per real file (symlinks resolved), by context.

    Walks every ``<size>/<context>/*.png`` and ``<context>/<size>/*.png`` under `theme_root`.
    A symlink whose target is a PNG of this size is an alias of that file (a target not
    walked itself stands under its first alias' context); one whose target is of another
    size, or outside the theme, is left out. Returns the icons (sorted by label, name)
    and counts: ``entries``, ``symlinks``, ``aliases_folded``, ``broken``, ``other_size``.
    """
    theme_root = Path(theme_root)
    real_root = theme_root.resolve()
    counts = Counter(entries=0, symlinks=0, aliases_folded=0, broken=0, other_size=0)
    by_real: dict[Path, tuple[str, str, list[str]]] = {}  # real path -> (label, name, aliases)
    pending: list[tuple[str, str, Path]] = []  # symlinks: (context, name, target)
    for dirpath, dirnames, filenames in os.walk(theme_root, followlinks=False):
        d = Path(dirpath)
        # a symlinked context or size folder is walked as itself: os.walk lists it in dirnames
        for sub in list(dirnames):
            if (d / sub).is_symlink():
                dirnames.remove(sub)  # an aliased folder: its files are aliases of the real folder's
        ctx = _context_of(d.relative_to(theme_root))
        if ctx is None or size not in d.relative_to(theme_root).parts:
            continue
        for fn in sorted(filenames):
            if not fn.endswith(".png"):
                continue
            p = d / fn
            counts["entries"] += 1
            name = fn[: -len(".png")]
            if p.is_symlink():
                counts["symlinks"] += 1
                target = p.resolve()
                if not target.is_file():
                    counts["broken"] += 1
                    continue
                pending.append((ctx, name, target))
            else:
                by_real[p.resolve()] = (ctx, name, [])
    for ctx, name, target in sorted(pending):
        if target in by_real:
            by_real[target][2].append(f"{ctx}/{name}")
            counts["aliases_folded"] += 1
        elif size in target.relative_to(real_root).parts if target.is_relative_to(real_root) else False:
            # a file of this size outside the context folders walked: its first alias stands for it
            by_real[target] = (ctx, name, [])
        else:
            counts["other_size"] += 1  # an alias of another size's file: not this size, left out
    icons = [Icon(label, name, real, sorted(al)) for real, (label, name, al) in by_real.items()]
    icons.sort(key=lambda i: (i.label, i.name))
    return icons, dict(counts)


def dedupe_bytes(icons: list[Icon]) -> tuple[list[Icon], int]:
    """Keep each byte-identical file once (the first by label, name); the others become its aliases."""
    seen: dict[str, Icon] = {}
    kept: list[Icon] = []
    dropped = 0
    for icon in icons:
        digest = hashlib.sha256(icon.real.read_bytes()).hexdigest()
        if digest in seen:
            seen[digest].aliases.append(f"{icon.label}/{icon.name}")
            dropped += 1
            continue
        seen[digest] = icon
        kept.append(icon)
    return kept, dropped


def select(
    icons: list[Icon], *, min_per_label: int, max_images: int | None, seed: int
) -> tuple[list[Icon], dict[str, int]]:
    """Drop small contexts, then a seeded sample down to `max_images`, then drop contexts the sample made small."""
    import random

    dropped: dict[str, int] = {}

    def drop_small(items: list[Icon]) -> list[Icon]:
        n = Counter(i.label for i in items)
        for label, c in n.items():
            if c < min_per_label:
                dropped[label] = dropped.get(label, 0) + c
        return [i for i in items if n[i.label] >= min_per_label]

    icons = drop_small(icons)
    if max_images and len(icons) > max_images:
        pick = sorted(random.Random(seed).sample(range(len(icons)), max_images))
        icons = drop_small([icons[i] for i in pick])
    return icons, dropped


def licences(copyright_text: str) -> tuple[str, list[str]]:
    """(the licence of ``Files: *``, every licence named) from a DEP-5 copyright file.

    A free-text file gives ``('see COPYRIGHT', [])``.
    """
    main = ""
    every: list[str] = []
    files = None
    for line in copyright_text.splitlines():
        if line.startswith("Files:"):
            files = line.split(":", 1)[1].strip()
        elif line.startswith("License:"):
            lic = line.split(":", 1)[1].strip()
            if lic and lic not in every:
                every.append(lic)
            if files == "*" and not main:
                main = lic
            files = None
    return (main or (every[0] if every else "see COPYRIGHT")), every


def write_corpus(
    name: str, theme: Theme, icons: list[Icon], fields: dict[str, str], dest: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Copy the icons into ``dest/<label>/<name>.png`` and write labels.csv and the provenance files."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    rows = []
    for icon in icons:
        rel = f"{icon.label}/{icon.name}.png"
        (dest / icon.label).mkdir(exist_ok=True)
        shutil.copyfile(icon.real, dest / rel)
        rows.append(
            {
                "path": rel,
                "label": icon.label,
                "family": icon.family,
                "package": theme.package,
                "version": fields.get("Version", ""),
                "source": str(icon.real).split("/usr/share/", 1)[-1],
                "aliases": " ".join(icon.aliases),
            }
        )
    with open(dest / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    per_label = dict(sorted(Counter(i.label for i in icons).items()))
    families = Counter(i.family for i in icons)
    prov = {
        "corpus": name,
        "package": theme.package,
        "version": fields.get("Version", ""),
        "source_package": fields.get("Source", theme.package),
        "homepage": fields.get("Homepage", ""),
        "style": theme.style,
        "theme_root": theme.root,
        "size": theme.size,
        "images": len(icons),
        "labels": len(per_label),
        "per_label": per_label,
        "families": len(families),
        "families_with_2_or_more": sum(1 for c in families.values() if c >= 2),
        **extra,
    }
    (dest / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    lines = [
        f"# {name}: {theme.package} {prov['version']}",
        "",
        f"- Package: `{theme.package}` {prov['version']} (source `{prov['source_package']}`), from Debian "
        f"(`apt-get download {theme.package}`), unpacked with `dpkg-deb -x`, not installed.",
        f"- .deb SHA-256: `{extra.get('deb_sha256', '')}`",
        f"- Licence (`Files: *`): **{extra.get('licence', '')}**; every licence the copyright file names: "
        + ", ".join(extra.get("licences", [])),
        "  The package's copyright file is copied as `COPYRIGHT`.",
        f"- Style: {theme.style}. Images: `{theme.root}`, the {theme.size} px PNGs.",
        f"- {len(icons)} images, {len(per_label)} labels (label = the theme's context folder); "
        f"finer label `family` (first word of the icon name): {len(families)} families.",
        f"- Kept each real file once: {extra.get('symlink_aliases_folded', 0)} symlinked aliases folded, "
        f"{extra.get('byte_duplicates_dropped', 0)} byte-identical files dropped; contexts under "
        f"{extra.get('min_per_label')} images dropped: {extra.get('labels_dropped') or 'none'}; "
        f"sampled to at most {extra.get('max_images')} (seed {extra.get('seed')}).",
        "",
        "| label | images |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in per_label.items()],
        "",
    ]
    (dest / "PROVENANCE.md").write_text("\n".join(lines))
    return prov


def fetch_deb(package: str, debs: Path | None, tmp: Path) -> Path:
    """The package's .deb: from `debs` when there, else ``apt-get download`` into `tmp` (and `debs`, if given)."""
    for folder in (debs, tmp):
        if folder and folder.is_dir():
            found = sorted(folder.glob(f"{package}_*.deb"))
            if found:
                return found[-1]
    where = debs or tmp
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", package], cwd=where, check=True, capture_output=True)
    found = sorted(where.glob(f"{package}_*.deb"))
    if not found:
        raise SystemExit(f"apt-get download {package}: no .deb appeared in {where}")
    return found[-1]


def deb_fields(deb: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True, text=True).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line and not line.startswith(" "):
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def build_from_tree(
    name: str,
    theme: Theme,
    tree: Path,
    fields: dict[str, str],
    dest: Path,
    *,
    min_per_label: int,
    max_images: int | None,
    seed: int,
    deb_sha256: str = "",
) -> dict[str, Any]:
    """One corpus from an unpacked package tree (``dpkg-deb -x`` output): collect, dedupe, select, write."""
    copyright_file = tree / "usr" / "share" / "doc" / theme.package / "copyright"
    text = copyright_file.read_text(encoding="utf-8", errors="replace") if copyright_file.exists() else ""
    main, every = licences(text)
    icons, counts = collect_icons(tree / theme.root, theme.size)
    found = len(icons)
    icons, byte_dups = dedupe_bytes(icons)
    icons, dropped = select(icons, min_per_label=min_per_label, max_images=max_images, seed=seed)
    extra = {
        "licence": main,
        "licences": every,
        "deb_sha256": deb_sha256,
        "entries": counts.get("entries", 0),
        "symlinks": counts.get("symlinks", 0),
        "symlink_aliases_folded": counts.get("aliases_folded", 0),
        "broken_symlinks": counts.get("broken", 0),
        "aliases_of_other_sizes": counts.get("other_size", 0),
        "real_files": found,
        "byte_duplicates_dropped": byte_dups,
        "labels_dropped": dropped,
        "min_per_label": min_per_label,
        "max_images": max_images,
        "seed": seed,
    }
    prov = write_corpus(name, theme, icons, fields, dest, extra)
    if text:
        (dest / "COPYRIGHT").write_text(text)
    return prov


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=",".join(THEMES), help=f"comma list of {', '.join(THEMES)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--debs", type=Path, default=None, help="folder of .deb files to use (and to download into)")
    ap.add_argument("--max-images", type=int, default=3000)
    ap.add_argument("--min-per-label", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    names = [n.strip() for n in args.corpora.split(",") if n.strip()]
    unknown = [n for n in names if n not in THEMES]
    if unknown:
        sys.exit(f"unknown corpora {unknown}: choose from {list(THEMES)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="icon-corpora-") as tmpdir:
        tmp = Path(tmpdir)
        for name in names:
            theme = THEMES[name]
            t0 = time.perf_counter()
            deb = fetch_deb(theme.package, args.debs, tmp)
            tree = tmp / name
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
            prov = build_from_tree(
                name,
                theme,
                tree,
                deb_fields(deb),
                args.out / name,
                min_per_label=args.min_per_label,
                max_images=args.max_images,
                seed=args.seed,
                deb_sha256=hashlib.sha256(deb.read_bytes()).hexdigest(),
            )
            prov["folder"] = str(args.out / name)
            prov["seconds"] = round(time.perf_counter() - t0, 1)
            results.append(prov)
            shutil.rmtree(tree)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corpora.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| corpus | images | labels | package | version | licence |")
    print("|---|---:|---:|---|---|---|")
    for p in results:
        print(f"| {p['corpus']} | {p['images']} | {p['labels']} | {p['package']} | {p['version']} | {p['licence']} |")
    for p in results:
        print(
            f"{p['corpus']}: {p['entries']} PNG entries, {p['symlink_aliases_folded']} aliases folded, "
            f"{p['byte_duplicates_dropped']} byte duplicates, dropped {p['labels_dropped'] or 'no labels'}; "
            f"{p['folder']}"
        )
    print(f"wrote {args.out / 'corpora.json'}")


if __name__ == "__main__":
    main()
