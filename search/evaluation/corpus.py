"""The labelled corpus: a folder's images with their labels, and a folder of links to a subset of them."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder import find_images

from .errors import EvaluationError


@dataclass
class LabelledFolder:
    root: Path
    paths: list[Path]
    labels: list[str]
    label_source: str

    def __len__(self) -> int:
        return len(self.paths)


def read_labelled_folder(
    folder: str | os.PathLike,
    *,
    label_column: str | None = None,
    max_images: int | None = None,
    seed: int = 0,
    skip_dirs: tuple[str, ...] = (),
) -> LabelledFolder:
    """List a folder's images with their labels; `max_images` takes a seeded random subset."""
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationError(f"{root}: not a folder")
    paths = find_images(root, skip_dirs=skip_dirs)
    if label_column:
        table = root / "labels.csv"
        if not table.exists():
            raise EvaluationError(f"{root}: --label-column {label_column!r} needs a labels.csv")
        with open(table, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or label_column not in rows[0] or "path" not in rows[0]:
            raise EvaluationError(f"{table}: needs columns 'path' and {label_column!r}")
        by_path = {r["path"]: r[label_column] for r in rows}
        rel = [p.relative_to(root).as_posix() for p in paths]
        keep = [i for i, r in enumerate(rel) if r in by_path]
        paths, labels = [paths[i] for i in keep], [by_path[rel[i]] for i in keep]
        source = f"labels.csv column {label_column!r}"
    else:
        labels = [p.parent.relative_to(root).as_posix() if p.parent != root else "" for p in paths]
        source = "folder relative to the root"
    if max_images and len(paths) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths, labels = [paths[i] for i in pick], [labels[i] for i in pick]
    if len(paths) < 3 or len(set(labels)) < 2:
        raise EvaluationError(f"{root}: need at least 3 images and 2 labels, found {len(paths)} and {len(set(labels))}")
    return LabelledFolder(root, paths, labels, source)


def subset_folder(corpus: LabelledFolder, work_dir: Path) -> Path:
    """A folder of symlinks to the sampled images (same relative paths), for training on the subset."""
    root = work_dir / "subset"
    for p in corpus.paths:
        link = root / p.relative_to(corpus.root)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(p.resolve(), link)
    return root
