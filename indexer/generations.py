"""Generation directories: how a publish switches readers to new files all at once.

The writer keeps its working files at the top of the index (the store, saved at every
checkpoint; the search index, neighbour table and hit rows, rewritten by each publish; the
model). A publish then makes ``generations/<N>/``: hard links to those files (a copy where
the filesystem has no hard links) and a copy of the manifest, all fsynced, and only then
replaces ``manifest.json``, which names that directory. Readers read ``manifest.json`` once
and open only files inside the directory it names, so they see the old generation whole or
the new one whole: a writer killed anywhere before the rename leaves the old one current.

Hard links make this free: every working file is replaced by an atomic rename (a new inode),
never written in place, so a linked file never changes under a reader.

Generations older than the previous one are removed after the switch; a reader that had one
open keeps its files open (on POSIX an unlinked open file lives on), and one that reads the
pointer just before the switch finds the previous generation still there.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

from encoder.atomic import TMP_SUFFIX, fsync_dir

from .layout import GENERATIONS, MODEL_DIR

log = logging.getLogger(__name__)

#: For tests only: a process whose environment names a point here (see :func:`kill_point`)
#: SIGKILLs itself there, so that a test can check what a reader sees after a kill at that exact
#: moment of a publish. Unset, it costs one dictionary lookup per point.
KILL_AT_ENV = "LOOKALIKE_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """A named moment of a publish where tests may SIGKILL the writer (see KILL_AT_ENV)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def generation_dir_name(generation: int) -> str:
    """A generation's directory, relative to the index directory (what the manifest records)."""
    return f"{GENERATIONS}/{generation}"


def start_generation(index_dir: Path, generation: int) -> Path:
    """An empty directory for `generation`. One left by a killed publish is removed first: it was
    never named by the manifest, so no reader has it open."""
    gen = index_dir / generation_dir_name(generation)
    if gen.exists():
        log.info("removing %s, left by an interrupted publish", gen)
        shutil.rmtree(gen)
    gen.mkdir(parents=True)
    kill_point("generation:dir")
    return gen


def link_into(gen: Path, index_dir: Path, names: Iterable[str]) -> None:
    """Hard-link the working files `names` of the index into generation directory `gen`."""
    for name in names:
        _link_or_copy(index_dir / name, gen / name)
        kill_point(f"generation:{name}")


def link_model(gen: Path, index_dir: Path) -> None:
    """Link the model's files into the generation: a reader must embed queries with the model
    that made the generation's vectors, and the writer swaps ``model/`` at the start of a run
    that changes the model, long before it publishes."""
    src = index_dir / MODEL_DIR
    if not src.is_dir():
        return  # an index published without a model (tests of the vectors alone)
    dst = gen / MODEL_DIR
    dst.mkdir()
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.endswith(TMP_SUFFIX):  # not the training's resume folder
            _link_or_copy(path, dst / path.name)
    fsync_dir(dst)
    kill_point("generation:model")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(exist_ok=True)  # a name inside a folder of the index (segments/...)
    try:
        os.link(src, dst)
    except OSError:  # no hard links here (some network and FAT filesystems): pay for a copy
        shutil.copy2(src, dst)
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())


def restore_working(index_dir: Path, files: Path, names: Iterable[str]) -> None:
    """Make the writer's working files `names` the ones of the published generation in `files`
    again (hard links, each swapped in by a rename): a publish that reuses them must not link a
    newer working copy that a killed publish left behind. OSError if one is missing there."""
    for name in names:
        src, dst = files / name, index_dir / name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        tmp = dst.with_name(dst.name + TMP_SUFFIX)
        tmp.unlink(missing_ok=True)
        _link_or_copy(src, tmp)
        os.replace(tmp, dst)


def seal_generation(gen: Path) -> None:
    """Make the generation's directory entries durable before the manifest names it."""
    for sub in gen.iterdir():
        if sub.is_dir():
            fsync_dir(sub)
    fsync_dir(gen)
    fsync_dir(gen.parent)
    kill_point("generation:synced")


def tidy_generations(index_dir: Path, current: int, *, point: str = "tidy") -> None:
    """Remove the generation directories that no reader needs: those numbered above `current` (left
    by a publish killed before it switched the manifest: never opened) and those older than the one
    before `current` (a reader may be opening that one right now; an older one's readers, if any,
    already hold its files open). The caller holds the writer's lock. `point`: the kill point
    (KILL_AT_ENV) after each removal."""
    root = index_dir / GENERATIONS
    if not root.is_dir():
        return
    numbers = sorted(int(gen.name) for gen in root.iterdir() if gen.name.isdigit())
    previous = max((n for n in numbers if n < current), default=current)
    for n in numbers:
        if n > current or n < previous:
            shutil.rmtree(root / str(n), ignore_errors=True)
            kill_point(point)
