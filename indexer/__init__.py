"""lookalike.indexer: what is in the corpus (SQLite catalog) and where its vectors live (FAISS).

Names load lazily (as in `encoder`) so that light submodules such as
``indexer.layout`` do not pull in faiss, SQLAlchemy and torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .layout import MODEL_DIR, default_index_dir

_LAZY = {
    "IndexBuildError": "index_model",
    "IndexLockedError": "index_model",
    "IndexSummary": "build",
    "build_index": "build",
    "SCHEMA_VERSION": "catalog",
    "Catalog": "catalog",
    "CatalogError": "catalog",
    "ImageRecord": "schema",
    "bytes_hash": "catalog",
    "content_hash": "catalog",
    "in_chunks": "catalog",
    "INDEX_TYPES": "vectors",
    "IndexFormatError": "manifest",
    "Manifest": "manifest",
    "VectorStore": "vectors",
    "plan_index": "vectors",
    "read_search_index": "vectors",
}

__all__ = ["MODEL_DIR", "default_index_dir", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
