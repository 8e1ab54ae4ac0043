"""The catalog on SQLite and on PostgreSQL: what differs between them is handled in indexer/catalog.py.

Tests that take `catalog_url` run on both; `postgres_url` ones on PostgreSQL only (tests/postgres.py
starts the server; without PostgreSQL installed they skip).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import sample_images
from sqlalchemy import create_engine, make_url, select, text

from indexer import Catalog, CatalogError, VectorStore, build_index
from indexer.catalog import SCHEMA_VERSION, STATUS_OK, ImageRecord, recorded_url, sqlite_url
from indexer.layout import CATALOG_URL


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for src in sample_images(2):
        dst = root / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def test_ids_past_32_bits_reach_the_vectors_and_the_engine(
    folder: Path, tiny_model: Path, catalog_url: str | None
) -> None:
    """Catalog ids are FAISS keys (int64): a catalog whose ids passed 2^32 still indexes and searches."""
    from search.engine import Engine

    idx = folder / ".lookalike"
    idx.mkdir()
    start = 5_000_000_000
    cat = Catalog.for_directory(idx, catalog_url)
    with cat.engine.begin() as c:
        if cat.engine.dialect.name == "sqlite":
            c.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('images', :n)"), {"n": start})
        else:
            c.execute(text("SELECT setval(pg_get_serial_sequence('images', 'id'), :n)"), {"n": start})
    cat.close()
    summary = build_index(folder, idx, tiny_model, progress=False, workers=1)
    assert summary.added == 6
    cat = Catalog.for_directory(idx)
    with cat.session() as s:
        ids = sorted(s.scalars(select(ImageRecord.id).where(ImageRecord.status == STATUS_OK)))
    cat.close()
    assert ids[0] > start and len(ids) == 6
    assert sorted(VectorStore.load(idx / "vectors.faiss").ids().tolist()) == ids
    engine = Engine(idx, device="cpu", reload_check_s=0)
    try:
        hits = engine.search_id(ids[0], k=5)
        assert {h.id for h in hits} == set(ids[1:])
        assert all(h.path and h.width for h in hits)
        assert {h.id for h in engine.search_id(ids[0], k=5, path_prefix="birds/")} <= set(ids)
    finally:
        engine.close()


def test_paths_sort_byte_wise_whatever_the_database_collation(tmp_path: Path, catalog_url: str | None) -> None:
    """ORDER BY path is the walk's order (Python's, by code point), and LIKE is case-sensitive,
    also in a PostgreSQL database whose collation is en-US (tests/postgres.py makes them so)."""
    from search.engine import Engine

    cat = Catalog(catalog_url or sqlite_url(tmp_path / "c.sqlite"))
    paths = ["B/x.png", "a/y.png", "_/z.png", "A/b.png", "é/e.png", "z/z.png", "b/x.png"]
    with cat.session() as s, s.begin():
        for p in paths:
            s.add(ImageRecord(path=p, size=1, mtime_ns=1, status=STATUS_OK))
    with cat.session() as s:
        assert list(s.scalars(select(ImageRecord.path).order_by(ImageRecord.path))) == sorted(paths)
    engine = object.__new__(Engine)  # only its catalog: _ids_with_prefix is a catalog query
    engine.catalog = cat
    try:
        by_id = {r.id: r.path for r in cat.get_images(range(1, 100)).values()}
        assert [by_id[i] for i in engine._ids_with_prefix("b/")] == ["b/x.png"]
        assert [by_id[i] for i in engine._ids_with_prefix("_/")] == ["_/z.png"]  # '_' is no wildcard
    finally:
        cat.close()


def test_schema_migration_from_v1_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """The numbered migrations run on PostgreSQL too (test_build.py has the SQLite one)."""
    eng = create_engine(postgres_url)
    with eng.begin() as c:
        for stmt in (
            "CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value TEXT)",
            "INSERT INTO meta VALUES ('schema_version', '1')",
            "CREATE TABLE models (id VARCHAR(32) PRIMARY KEY, kind VARCHAR(32), config_json TEXT, "
            "created_at TIMESTAMP WITH TIME ZONE)",
            "CREATE TABLE images (id SERIAL PRIMARY KEY, path VARCHAR(4096) UNIQUE, size BIGINT, mtime_ns BIGINT, "
            "content_hash VARCHAR(64), width INTEGER, height INTEGER, format VARCHAR(16), status VARCHAR(16), "
            "error TEXT, embedded_at TIMESTAMP WITH TIME ZONE, model_id VARCHAR(32) REFERENCES models (id))",
            "INSERT INTO images (path, size, mtime_ns, status) VALUES ('x.png', 1, 1, 'ok')",
        ):
            c.execute(text(stmt))
    eng.dispose()
    with pytest.raises(CatalogError, match="v1"):
        Catalog(postgres_url, read_only=True)
    cat = Catalog(postgres_url)
    assert cat.schema_version() == SCHEMA_VERSION
    rec = cat.get_by_path("x.png")
    assert rec.duplicate_of is None and rec.vector_seq == 0
    with cat.engine.connect() as c:
        q = "SELECT data_type FROM information_schema.columns WHERE table_name = 'images' AND column_name = :c"
        assert c.execute(text(q), {"c": "duplicate_of"}).scalar() == "bigint"
    cat.close()
    Catalog(postgres_url, read_only=True).close()  # now current


def test_a_new_postgresql_catalog_has_64_bit_ids_and_byte_ordered_paths(postgres_url: str) -> None:
    cat = Catalog(postgres_url)
    with cat.engine.connect() as c:
        q = (
            "SELECT column_name, data_type, collation_name FROM information_schema.columns "
            "WHERE table_name = 'images' AND column_name IN ('id', 'duplicate_of', 'path')"
        )
        cols = {name: (kind, coll) for name, kind, coll in c.execute(text(q))}
    cat.close()
    assert cols == {"id": ("bigint", None), "duplicate_of": ("bigint", None), "path": ("character varying", "C")}


def test_the_index_records_where_its_catalog_is_without_the_password(tmp_path: Path, postgres_url: str) -> None:
    idx = tmp_path / "index"
    idx.mkdir()
    with_password = postgres_url.replace("lookalike@", "lookalike:s3cret@")  # the test server trusts anyone
    Catalog.for_directory(idx, with_password).close()
    recorded = (idx / CATALOG_URL).read_text()
    assert "s3cret" not in recorded and make_url(recorded.strip()) == make_url(postgres_url)
    reader = Catalog.for_directory(idx, read_only=True)  # found without being told
    try:
        assert reader.engine.dialect.name == "postgresql" and "s3cret" not in reader.url
        assert reader.schema_version() == SCHEMA_VERSION
    finally:
        reader.close()
    # A writer given another URL records it; given the index's own SQLite file, it drops the record.
    elsewhere = sqlite_url(tmp_path / "elsewhere.sqlite")
    Catalog.for_directory(idx, elsewhere).close()
    assert recorded_url(idx) == elsewhere
    Catalog.for_directory(idx, sqlite_url(idx / "catalog.sqlite")).close()
    assert not (idx / CATALOG_URL).exists() and recorded_url(idx) is None


def test_an_unreachable_database_is_a_catalog_error_without_the_password(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql+psycopg://someone:s3cret@/nowhere?host={tmp_path}&connect_timeout=2"
    with pytest.raises(CatalogError) as err:
        Catalog(url, read_only=True)
    msg = str(err.value)
    assert "cannot open the catalog" in msg and "PGPASSWORD" in msg and "s3cret" not in msg
    with pytest.raises(CatalogError, match="not a database URL"):
        Catalog("not a url")
