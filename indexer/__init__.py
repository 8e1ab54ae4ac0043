"""lookalike.indexer: what is in the corpus (SQLite catalog) and where its vectors live (FAISS)."""

from .build import IndexBuildError, IndexSummary, build_index, default_index_dir
from .catalog import SCHEMA_VERSION, Catalog, CatalogError, ImageRecord
from .vectors import INDEX_TYPES, Manifest, VectorStore, plan_index, read_search_index

__all__ = [
    "INDEX_TYPES",
    "SCHEMA_VERSION",
    "Catalog",
    "CatalogError",
    "ImageRecord",
    "IndexBuildError",
    "IndexSummary",
    "Manifest",
    "VectorStore",
    "build_index",
    "default_index_dir",
    "plan_index",
    "read_search_index",
]
