"""Where an index keeps its parts. No heavy imports: the CLI reads this at start-up."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_DIR = "model"  # the autoencoder that made the vectors, inside the index directory


def default_index_dir(folder: str | os.PathLike) -> Path:
    """By default an index lives in a hidden folder inside the folder it indexes."""
    return Path(folder) / ".lookalike"
