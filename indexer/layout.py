"""Where an index keeps its parts: every file and folder name inside an index directory.

No heavy imports: the CLI reads this at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The index directory's own name inside the folder it indexes (see :func:`default_index_dir`).
DEFAULT_INDEX_DIR = ".lookalike"

# ---- written by `lookalike index`
CATALOG = "catalog.sqlite"  # one row per image file (indexer/catalog.py)
CATALOG_URL = "catalog.url"  # where the catalog is when it is not CATALOG: a database URL, without password
#: All exact vectors in one FAISS file: written by a publish only when the search index is flat (it is then
#: what queries search); other generations' servers read SEGMENTS (indexer/publish.py, indexer/exact.py).
STORE = "vectors.faiss"
#: The exact vectors as append-only segments, keyed by catalog id: the source of truth (indexer/segments.py).
#: A checkpoint adds a segment; SEGMENTS/SEGMENT_LIST names the live ones.
SEGMENTS = "segments"
SEGMENT_LIST = "list.json"
SEARCH = "search.faiss"  # the approximate index built from the store, for large corpora
NEIGHBOURS = "neighbours.npy"  # neighbours precomputed per image (indexer/neighbours.py)
HIT_ROWS = "hit_rows.bin"  # path, width, height of the indexed images (indexer/hit_rows.py)
MANIFEST = "manifest.json"  # written last: names the current generation directory; readers watch it
#: Published generations: GENERATIONS/<N>/ holds everything a reader opens for generation N (the store
#: and search index, neighbour table, hit rows and model, hard links to the writer's files above, and
#: a copy of the manifest). The files above are the writer's working copies; readers never open them
#: (except in an index published before generations, whose manifest names no directory).
GENERATIONS = "generations"
LOCK = "lock"  # flock'ed by the one writer
#: Results of shards embedded on other machines, waiting for the driver (indexer/shard_file.py); each file
#: is removed once a store save holds its vectors, and a run adopts what a killed one left here.
SHARDS = "shards"
MODEL_DIR = "model"  # the autoencoder that made the vectors
MODEL_INCOMING = MODEL_DIR + ".incoming"  # a model being copied in, renamed to MODEL_DIR when complete
MODEL_OLD = MODEL_DIR + ".old"  # the model it replaces, until the swap is done

# ---- written by the search side
THUMBNAILS = "thumbnails"  # cached thumbnails served by the web page
REPORT_CACHE = "report_cache.sqlite"  # per-image scan results that reports reuse
#: Files moved aside when near-duplicates are resolved (search/review/): QUARANTINE/<batch>/<relative path>,
#: each batch's journal beside it as QUARANTINE/<batch>.journal while a move is under way. Inside the index,
#: so the indexer's walk never sees them, and never deleted by lookalike.
QUARANTINE = "quarantine"

#: Neighbours precomputed per image for by-id queries (indexer/neighbours.py): the web
#: page's first page (24) and the API's default k (10) up to offset 22; 32 x 12 bytes plus id and
#: fingerprint = 400 bytes per image, 42% of a 240-d float32 store.
NEIGHBOURS_K = 32


def default_index_dir(folder: str | os.PathLike) -> Path:
    """By default an index lives in a hidden folder inside the folder it indexes."""
    return Path(folder) / DEFAULT_INDEX_DIR
