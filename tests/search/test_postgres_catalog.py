"""End to end with a PostgreSQL catalog: `lookalike index --catalog URL`, then `lookalike query` and a
real `lookalike serve` answer from it (tests/postgres.py starts the server; skipped without it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fill_folder, sample_images
from typer.testing import CliRunner

from indexer import Catalog
from indexer.layout import CATALOG, CATALOG_URL
from search.cli import app

from .conftest import run_server

pytestmark = pytest.mark.postgres
runner = CliRunner()


def test_index_query_and_serve_from_a_postgresql_catalog(tmp_path: Path, search_model: Path, postgres_url: str) -> None:
    folder = fill_folder(tmp_path / "images", 3)
    idx = folder / ".lookalike"
    args = ["index", str(folder), "--catalog", postgres_url, "--model", str(search_model), "--workers", "1"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] == 9
    assert not (idx / CATALOG).exists()  # no SQLite catalog beside it: the rows are in PostgreSQL
    assert (idx / CATALOG_URL).is_file()
    cat = Catalog(postgres_url, read_only=True)
    bird = "birds/" + sorted(p.name for p in sample_images(3, ("birds",)))[0]
    bird_id = cat.get_by_path(bird).id
    assert cat.count() == 9
    cat.close()

    # Later commands need no --catalog: the index records where its catalog is.
    res = runner.invoke(app, ["index", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unchanged"] == 9 and not (idx / CATALOG).exists()
    res = runner.invoke(app, ["query", "--id", str(bird_id), "--index", str(folder), "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)["results"]
    assert len(hits) == 3 and bird_id not in {h["id"] for h in hits}
    res = runner.invoke(app, ["query", str(folder / bird), "--index", str(folder), "--path-prefix", "birds/", "--json"])
    assert res.exit_code == 0, res.output
    birds = {f"birds/{p.name}" for p in sample_images(3, ("birds",))}
    assert {h["path"] for h in json.loads(res.stdout)["results"]} <= birds - {bird}  # the query is the image

    # The server, told the URL by its setting (LOOKALIKE_CATALOG_URL) rather than by the index.
    (idx / CATALOG_URL).unlink()
    with run_server(idx, {"LOOKALIKE_CATALOG_URL": postgres_url}) as server:
        status, body = server.get("/stats")
        assert status == 200 and json.loads(body)["count"] == 9
        status, body = server.get(f"/images/{bird_id}/similar?k=4&path_prefix=birds/")
        assert status == 200, body
        similar = json.loads(body)["results"]
        assert 1 <= len(similar) <= 2 and all(h["path"].startswith("birds/") for h in similar)
        status, body = server.get(f"/images/{bird_id}")
        assert status == 200 and json.loads(body)["path"] == bird
        status, body = server.get("/images?folder=chess&sort=path")
        assert status == 200 and [i["path"] for i in json.loads(body)["images"]] == sorted(
            f"chess/{p.name}" for p in sample_images(3, ("chess",))
        )
