"""Index directories without images, for storage tests at sizes no folder of images here could
reach: a tiny model and catalog rows written straight into SQLite, whose vectors the caller adds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from encoder import ModelConfig, create_model, model_id, save_model
from indexer import Catalog


def new_index_dir(root: Path, dim: int) -> tuple[Path, str]:
    """`root/index` with an untrained model of `dim` latent dimensions registered in its catalog;
    returns (directory, model id)."""
    idx = root / "index"
    idx.mkdir(parents=True)
    save_model(create_model(ModelConfig(image_size=32, channels=(8, 16), latent_dim=dim)), idx / "model")
    mid = model_id(idx / "model")
    cat = Catalog.for_directory(idx)
    cat.ensure_model(mid, "conv", {})
    cat.close()
    return idx, mid


def add_rows(idx: Path, mid: str, first: int, last: int, seq: int = 1) -> None:
    """Catalog rows for ids first..last, as checkpoint `seq` would have written them."""
    con = sqlite3.connect(idx / "catalog.sqlite")
    con.executemany(
        "INSERT INTO images (id, path, size, mtime_ns, content_hash, width, height, format, status, "
        "model_id, vector_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        ((i, f"img_{i:07d}.jpg", 100, 0, f"{i:040x}", 64, 48, "JPEG", "ok", mid, seq) for i in range(first, last + 1)),
    )
    con.commit()
    con.close()
