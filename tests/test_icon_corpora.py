"""bench/icon_corpora.py on a synthetic unpacked icon theme (no download, no dpkg).

The assembly must keep each real file once (symlinked aliases folded, byte-identical
files dropped, aliases of another size left out), label by context whichever way the
theme nests ``size/context`` or ``context/size``, drop small contexts, and record the
package, version and licence.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from conftest import bench_module
from PIL import Image

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: someone
License: LGPL-3+

Files: debian/*
Copyright: someone else
License: GPL-2+

License: LGPL-3+
 text
"""


@pytest.fixture(scope="module")
def ic():
    yield from bench_module("icon_corpora")


def _png(path: Path, colour: tuple[int, int, int], size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _theme(tree: Path, nested: str) -> Path:
    """A theme with apps (3 real files, 1 alias, 1 byte copy), places (2), and other sizes."""
    root = tree / "usr" / "share" / "icons" / "t"

    def at(ctx: str, size: str = "48x48") -> Path:
        return root / (f"{size}/{ctx}" if nested == "size/context" else f"{ctx}/{size}")

    for i in range(3):
        _png(at("apps") / f"app-{i}.png", (10 * i, 0, 0))
    os.symlink("app-0.png", at("apps") / "alias-of-0.png")
    (at("apps") / "copy-of-1.png").write_bytes((at("apps") / "app-1.png").read_bytes())
    _png(at("places") / "folder-home.png", (0, 90, 0))
    _png(at("places") / "folder-music.png", (0, 99, 0))
    _png(at("apps", "16x16") / "small.png", (1, 2, 3), 16)
    os.symlink(os.path.relpath(at("apps", "16x16") / "small.png", at("apps")), at("apps") / "small-alias.png")
    doc = tree / "usr" / "share" / "doc" / "pkg"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    return root


@pytest.mark.parametrize("nested", ["size/context", "context/size"])
def test_build_from_tree(ic, tmp_path: Path, nested: str) -> None:
    tree = tmp_path / "tree"
    _theme(tree, nested)
    theme = ic.Theme("pkg", "usr/share/icons/t", "48x48", "test style")
    dest = tmp_path / "out" / "t"
    prov = ic.build_from_tree(
        "t", theme, tree, {"Version": "1.0-1"}, dest, min_per_label=3, max_images=None, seed=0, deb_sha256="ab"
    )

    # apps: app-0 (with its alias), app-1 (its byte copy dropped), app-2; places (2) is under 3: dropped
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == [
        "apps/app-0.png",
        "apps/app-1.png",
        "apps/app-2.png",
    ]
    with open(dest / "labels.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert rows["apps/app-0.png"]["aliases"] == "apps/alias-of-0"
    assert rows["apps/app-1.png"]["aliases"] == "apps/copy-of-1"
    assert {r["label"] for r in rows.values()} == {"apps"}
    assert {r["family"] for r in rows.values()} == {"app"}
    assert {r["version"] for r in rows.values()} == {"1.0-1"}

    assert prov["images"] == 3 and prov["labels"] == 1
    assert prov["licence"] == "LGPL-3+" and prov["licences"] == ["LGPL-3+", "GPL-2+"]
    assert prov["symlink_aliases_folded"] == 1 and prov["byte_duplicates_dropped"] == 1
    assert prov["aliases_of_other_sizes"] == 1
    assert prov["labels_dropped"] == {"places": 2}
    assert json.loads((dest / "provenance.json").read_text())["package"] == "pkg"
    assert (dest / "COPYRIGHT").read_text() == COPYRIGHT
    assert "LGPL-3+" in (dest / "PROVENANCE.md").read_text()


def test_sample_is_seeded_and_capped(ic, tmp_path: Path) -> None:
    icons = [ic.Icon(f"c{i % 3}", f"n{i}", tmp_path / f"{i}.png") for i in range(60)]
    a, _ = ic.select(icons, min_per_label=5, max_images=30, seed=1)
    b, _ = ic.select(icons, min_per_label=5, max_images=30, seed=1)
    c, _ = ic.select(icons, min_per_label=5, max_images=30, seed=2)
    assert [i.name for i in a] == [i.name for i in b] != [i.name for i in c]
    assert len(a) <= 30


def test_family(ic) -> None:
    assert ic.family_of("folder-music") == "folder"
    assert ic.family_of("x-office-document") == "office"
    assert ic.family_of("gnome-mime-text") == "mime"
    assert ic.family_of("stock_new-address-book") == "new"
