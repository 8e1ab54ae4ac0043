"""Shared fixtures: small real image folders and bad files, made fresh in tmp_path."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

#: A real PostgreSQL server for the catalog tests (tests/postgres.py): `catalog_url`, `postgres_url`.
pytest_plugins = ("postgres",)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def bench_module(name: str) -> Iterator[ModuleType]:
    """bench/<name>.py loaded as the module `name` (bench/ is scripts, not a package), for a
    module-scoped fixture to yield; removed from ``sys.modules`` afterwards. It is registered while
    it loads because dataclasses look their module up as the class is made."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(name, None)


def sample_images(n_per_class: int = 4, classes: tuple[str, ...] = ("birds", "letters", "chess")) -> list[Path]:
    """The first few images of some classes of the sample corpus."""
    out: list[Path] = []
    for c in classes:
        out += sorted((DATA / c).glob("*.png"))[:n_per_class]
    return out


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside, the thread count as it was after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest on one thread, and do not thrash a shared CPU."""
    with one_torch_thread():
        yield


def fill_folder(root: Path, n_per_class: int = 4, classes: tuple[str, ...] = ("birds", "letters", "chess")) -> Path:
    """Copy sample images into `root`, one sub-folder per class."""
    for src in sample_images(n_per_class, classes):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


#: Small enough to train in a second on a CPU: poor embeddings, real code paths.
TINY_CONFIG = dict(image_size=32, channels=(8, 16), latent_dim=16)


def train_tiny(tmp_path_factory: pytest.TempPathFactory, name: str, seed: int = 0) -> Path:
    """A tiny model trained for one epoch on 9 sample images (for session fixtures).

    Always on one thread: the weights then do not depend on which test first asked for the fixture
    (inside `torch_one_thread` or not), nor on the runner (pytest-xdist workers order tests
    differently); a float sum's order changes with the thread count, and with it the model."""
    from encoder import ModelConfig, TrainConfig, train

    folder = fill_folder(tmp_path_factory.mktemp(f"{name}-train"), 3)
    out = tmp_path_factory.mktemp(name)
    with one_torch_thread():
        train(folder, out, ModelConfig(**TINY_CONFIG), TrainConfig(epochs=1, batch_size=4, seed=seed), progress=False)
    return out


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """12 real images from data/ in three class folders."""
    return fill_folder(tmp_path / "images")


def write_jpeg(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, quality: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=quality)
    return path


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """One file for every kind of bad input, each named for what is wrong with it."""
    d = tmp_path / "bad"
    d.mkdir()
    good = write_jpeg(d / "good.jpg", (320, 240))
    data = good.read_bytes()
    files = {
        "empty": d / "empty.jpg",
        "truncated_jpeg": d / "truncated.jpg",
        "not_image": d / "notes.png",
        "truncated_png": d / "truncated.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated_jpeg"].write_bytes(data[: len(data) // 3])
    files["not_image"].write_text("this is a text file with an image extension\n" * 20)
    png = d / "full.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(png)
    files["truncated_png"].write_bytes(png.read_bytes()[:3000])
    png.unlink()
    return files
