"""Reports written and read back: JSON, CSV and self-contained HTML (rendered in Chromium), the
`lookalike report` command, and the paginated HTTP endpoints, on the reports' planted folder
(tests/search/conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from search.engine import Engine
from search.reports import SCHEMA, TIERS, ReportError, Tier, build_report, write_report

# ---------------------------------------------------------------- formats


@pytest.fixture(scope="module")
def full_report(reports_planted: dict):
    eng = Engine(reports_planted["index"])
    queries = reports_planted["root"] / "copies"
    rep = build_report(eng, near=(Tier("loose", 0.5),), queries=queries, neighbours_k=3, outliers_top=4, workers=1)
    yield eng, rep
    eng.close()


def test_json_report_parses_back_with_every_section(full_report, tmp_path: Path) -> None:
    _, rep = full_report
    data = json.loads(write_report(rep, tmp_path / "r.json").read_text())
    assert data["schema"] == SCHEMA and data["images"] == rep.images
    exact = data["exact_duplicates"]["groups"]
    assert exact[0]["size"] == 2 and exact[0]["others"][0]["path"] == "copies/same.png"
    tier = data["near_duplicates"]["tiers"][0]
    assert tier["name"] == "loose" and tier["groups"] and tier["groups"][0]["keeper"]["similarity"] == 1.0
    q = {Path(x["query"]["path"]).name: x for x in data["neighbours"]["queries"]}
    assert set(q) == {"same.png", "smaller.jpg"} and all(len(x["neighbours"]) == 3 for x in q.values())
    assert q["same.png"]["exact_match_id"] is not None  # the same bytes are indexed
    # each neighbour also says where its similarity stands among the index's pairs, ordered with it
    ranks = [h["percentile"] for h in q["smaller.jpg"]["neighbours"]]
    assert all(0 <= r <= 100 for r in ranks) and ranks == sorted(ranks, reverse=True)
    assert data["outliers"]["top"][0]["path"] == "odd/noise.png"
    assert data["outliers"]["rule"]["threshold_z"] == 3.5


def test_csv_report_has_one_row_per_image(full_report, tmp_path: Path) -> None:
    _, rep = full_report
    with open(write_report(rep, tmp_path / "r.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    sections = {r["section"] for r in rows}
    assert sections == {"exact", "near", "neighbours", "outliers"}
    exact = [r for r in rows if r["section"] == "exact"]
    assert [r["role"] for r in exact] == ["keeper", "copy"]
    near = [r for r in rows if r["section"] == "near"]
    assert len(near) == sum(len(g.members) for g in rep.near.groups["loose"])
    top = [r for r in rows if r["section"] == "outliers"]
    assert top[0]["path"] == "odd/noise.png" and float(top[0]["score"]) > float(top[1]["score"])
    neighbours = [r for r in rows if r["role"] == "neighbour"]
    assert neighbours and all(0 <= float(r["percentile"]) <= 100 for r in neighbours)


def test_html_report_is_self_contained(full_report, tmp_path: Path) -> None:
    eng, rep = full_report
    text = write_report(rep, tmp_path / "r.html", engine=eng).read_text()
    assert "odd/noise.png" in text and "copies/same.png" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert text.count("data:image/jpeg;base64,") >= 5 and "data:image/svg+xml;base64," in text


def test_unknown_format_is_refused(full_report, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="unknown format"):
        write_report(full_report[1], tmp_path / "r.xlsx")


@pytest.mark.browser
def test_html_report_renders_in_chromium(full_report, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium (install it with `bash .ci/browser`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    eng, rep = full_report
    page_file = write_report(rep, tmp_path / "r.html", engine=eng)
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=args)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            assert page.locator("h1").inner_text() == "lookalike report"
            assert page.locator("#exact .group").count() == 1
            assert page.locator("#near .group").count() == len(rep.near.groups["loose"])
            assert page.locator("#neighbours .group").count() == 2
            broken = page.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length")
            assert broken == 0 and page.locator("img").count() >= 10
            hist = page.locator("#histogram")
            assert hist.evaluate("i => i.naturalWidth") > 100 and hist.bounding_box()["height"] > 50
            assert "odd/noise.png" in page.locator("#outliers").inner_text()
            keeper = page.locator("#exact .group .card").first.inner_text()
            assert "keep" in keeper
            assert all(u.startswith(("file:", "data:")) for u in requests)  # nothing fetched from anywhere
        finally:
            browser.close()


# ---------------------------------------------------------------- CLI and HTTP


def test_cli_report_writes_each_format(reports_planted: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from search.cli import app

    runner = CliRunner()
    for fmt in ("json", "csv", "html"):
        out = tmp_path / f"r.{fmt}"
        args = [
            "report",
            "--index",
            str(reports_planted["index"]),
            "--duplicates",
            "--near",
            "0.5",
            "--outliers",
            "3",
            "--queries",
            "1,2",
            "--workers",
            "1",
            "--format",
            fmt,
            "--out",
            str(out),
        ]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "exact duplicates: 1 groups, 1 copies" in res.output and out.stat().st_size > 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [q["query"]["id"] for q in data["neighbours"]["queries"]] == [1, 2]
    res = runner.invoke(app, ["report", "--index", str(reports_planted["index"]), "--near", "x", "--out", "r.json"])
    assert res.exit_code == 2 and "unknown tier" in res.output


def test_http_reports_paginate(reports_planted: dict) -> None:
    from fastapi.testclient import TestClient

    from search.api import Settings, create_app

    eng = Engine(reports_planted["index"])
    with TestClient(create_app(Settings(index=reports_planted["index"]), engine=eng)) as client:
        r = client.get("/reports/tiers")
        assert [(t["name"], t["threshold"], t["hamming"]) for t in r.json()["tiers"]] == [
            (t.name, t.threshold, t.hamming) for t in TIERS
        ]
        r = client.get("/reports/duplicates", params={"tier": "exact"})
        assert r.status_code == 200 and r.json()["total"] == 1
        assert {m["path"] for m in [r.json()["groups"][0]["keeper"], *r.json()["groups"][0]["others"]]} >= {
            "copies/same.png"
        }
        loosest = TIERS[-1].name
        r = client.get("/reports/duplicates", params={"tier": loosest, "limit": 1})
        assert r.status_code == 200 and len(r.json()["groups"]) <= 1
        assert client.get("/reports/duplicates", params={"tier": "nope"}).status_code == 422
        first = client.get("/reports/outliers", params={"limit": 5}).json()
        second = client.get("/reports/outliers", params={"limit": 5, "offset": 5}).json()
        assert first["total"] == second["total"] == eng.catalog.count() - 1
        assert first["results"][0]["path"] == "odd/noise.png" and len(first["results"]) == 5
        assert not {x["id"] for x in first["results"]} & {x["id"] for x in second["results"]}
        assert first["results"][-1]["score"] >= second["results"][0]["score"]
        assert "counts" in first["histogram"] and first["rule"]["threshold_z"] == 3.5
        ids = [1, 2, 3]
        page1 = client.get("/reports/neighbours", params={"ids": ids, "k": 2, "limit": 2}).json()
        page2 = client.get("/reports/neighbours", params={"ids": ids, "k": 2, "limit": 2, "offset": 2}).json()
        assert page1["total"] == 3 and [q["query"]["id"] for q in page1["queries"]] == [1, 2]
        assert [q["query"]["id"] for q in page2["queries"]] == [3] and len(page2["queries"][0]["neighbours"]) == 2
        # one answer is bounded: at most 100 queries of 100 neighbours a page
        assert client.get("/reports/neighbours", params={"ids": ids, "k": 100, "limit": 100}).status_code == 200
        assert client.get("/reports/neighbours", params={"ids": ids, "k": 101}).status_code == 422
        assert client.get("/reports/neighbours", params={"ids": ids, "limit": 101}).status_code == 422
    eng.close()


def test_http_reports_need_the_token_when_one_is_set(reports_planted: dict) -> None:
    from fastapi.testclient import TestClient

    from search.api import Settings, create_app

    eng = Engine(reports_planted["index"])
    with TestClient(create_app(Settings(index=reports_planted["index"], api_token="s3cret"), engine=eng)) as client:
        assert client.get("/reports/tiers").status_code == 401
        ok = client.get("/reports/tiers", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    eng.close()
