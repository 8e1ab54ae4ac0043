"""``manifest.json``: what a published generation is, the file readers watch.

It names the generation's directory (indexer/generations.py), the search index's type, parameters and
the reason for the choice, the model, and the features a reader must know to serve it. A publish
writes it last; readers open only the files of the generation it names.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from encoder.atomic import atomic_write_json
from encoder.errors import LookalikeError

from .layout import MANIFEST, MODEL_DIR, STORE

__all__ = ["READER_FEATURES", "IndexFormatError", "Manifest"]


class IndexFormatError(LookalikeError):
    """An index a newer lookalike wrote, in a form this version cannot read correctly."""


#: What this lookalike knows how to read. A manifest lists in ``requires`` the features its generation
#: uses that change how it must be read; a reader that meets one it does not know refuses the index
#: rather than answer wrongly. (A lookalike from before deltas reads a delta generation's manifest,
#: drops the ``delta`` field it does not know, and serves the base alone: missing the new images and
#: showing removed ones. Versions from before ``requires`` cannot be protected; later ones are.)
READER_FEATURES: frozenset[str] = frozenset({"delta"})


@dataclass
class Manifest:
    generation: int = 0
    count: int = 0
    dim: int = 0
    model_id: str | None = None
    index_type: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    search_file: str = STORE
    bytes_per_vector: float = 0.0
    neighbours_k: int = 0  # rows of neighbours.npy hold this many neighbours (0: no table)
    neighbours: str = ""  # what the last update of the table did
    updated_at: float = 0.0
    #: The generation's directory, relative to the index directory ("" in an index published before
    #: generations: its files are the ones at the top of the index).
    directory: str = ""
    #: The catalog's store save sequence number when this was published: a later save (by a run
    #: killed before it published) means the store differs from the published one.
    store_seq: int = 0
    #: Set when the generation is its search index's base and a delta (indexer/delta.py): what the
    #: delta holds, the base's generation and reason, and how its hit rows are published
    #: ("layered": the base's and ``hit_rows.delta.bin``; "full": ``hit_rows.bin`` alone; "none").
    delta: dict[str, Any] = field(default_factory=dict)
    #: The features of this generation that a reader must know to serve it correctly
    #: (:data:`READER_FEATURES`), set by :meth:`write` from what the generation uses.
    requires: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, index_dir: str | os.PathLike) -> Manifest | None:
        """The published manifest (None: nothing published yet). IndexFormatError when the generation
        needs a feature this lookalike does not know: a newer one wrote it."""
        try:
            data = json.loads((Path(index_dir) / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        unknown = sorted(set(data.get("requires", [])) - READER_FEATURES)
        if unknown:
            raise IndexFormatError(
                f"{index_dir}: this index was written by a newer lookalike and needs {', '.join(unknown)},"
                " which this version cannot read; upgrade lookalike, or index the folder again into a new"
                " index directory with this version"
            )
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, index_dir: str | os.PathLike, *, stamp: bool = True) -> None:
        if stamp:
            self.updated_at = time.time()
        self.requires = self.features()
        atomic_write_json(Path(index_dir) / MANIFEST, asdict(self))

    def features(self) -> list[str]:
        """The features this generation uses that change how it must be read (see ``requires``)."""
        return ["delta"] if self.delta else []

    def files(self, index_dir: str | os.PathLike) -> Path:
        """The directory that holds this generation's files (what readers open)."""
        return Path(index_dir) / self.directory

    def model_dir(self, index_dir: str | os.PathLike) -> Path:
        """The model that made this generation's vectors."""
        return self.files(index_dir) / MODEL_DIR
