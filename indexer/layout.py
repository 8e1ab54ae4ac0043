"""Where an index keeps its parts. No heavy imports: the CLI reads this at start-up."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR = "model"  # the autoencoder that made the vectors, inside the index directory
#: Neighbours precomputed per image for by-id queries (indexer/neighbours.py): the web
#: page's first page (24) and the API's default k (10) up to offset 22; 32 x 12 bytes plus id and
#: fingerprint = 400 bytes per image, 42% of a 240-d float32 store.
NEIGHBOURS_K = 32


def default_index_dir(folder: str | os.PathLike) -> Path:
    """By default an index lives in a hidden folder inside the folder it indexes."""
    return Path(folder) / ".lookalike"
