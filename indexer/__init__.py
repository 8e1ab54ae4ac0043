"""lookalike.indexer: what is in the corpus (SQLite catalog) and where its vectors live (FAISS)."""
