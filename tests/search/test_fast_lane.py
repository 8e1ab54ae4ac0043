"""The fast lane (search/api/fast_lane.py): plain by-id queries answered before FastAPI's routing.

It must answer exactly what the route answers, byte for byte, and leave every
other request (errors, filters, deep pages, a missing token) to the route.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fill_folder
from fastapi import HTTPException
from fastapi.testclient import TestClient

from indexer import build_index
from search.api import Settings, create_app
from search.api.deps import get_paging
from search.engine import Engine

from .conftest import TOKEN

#: This module's index keeps 4 neighbours an image (of 12 images), so pages past it exist.
TABLE_K = 4
#: Queries the lane answers itself.
PLAIN = ["k=1", "k=4", "k=2&offset=2", "offset=3&k=1", "k=3&min_similarity=0.1", "k=4&min_similarity=-1",
         "k=4&min_similarity=1", "min_similarity=-0.25&k=3", "k=4&unknown=x",
         "k=4&unknown=1&unknown=2", "k=%33"]  # fmt: skip
#: Queries it leaves to the route: invalid ones (which must still get the route's 422), spellings it
#: does not parse itself, a path filter, pages past the table (the default k=10 among them),
#: repeated parameters.
ROUTED = ["k=0", "k=1001", "k=abc", "k=+3", "k=03", "k=3.0", "k= 3", "k=", "offset=-1", "offset=100001",
          "k=3&min_similarity=2", "k=3&min_similarity=nan", "k=3&min_similarity=1e-1", "k=3&min_similarity=.5",
          "k=3&min_similarity=+0.5", "k=3&path_prefix=birds/", "k=3&path_prefix=", "", "k=5", "k=2&offset=3",
          "k=3&k=4", "k=1&offset=1&offset=2"]  # fmt: skip


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, search_model: Path) -> Iterator[Engine]:
    folder = fill_folder(tmp_path_factory.mktemp("lane") / "images")
    build_index(folder, model_dir=search_model, progress=False, workers=1, neighbours=TABLE_K)
    eng = Engine(folder / ".lookalike", device="cpu", reload_check_s=0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def ids(engine: Engine) -> list[int]:
    return sorted(engine.snapshot().neighbours["id"].tolist())


def client(engine: Engine, **settings) -> TestClient:
    return TestClient(create_app(Settings(index=engine.index_dir, **settings), engine))


def _get(client: TestClient, image_id: object, query: str, **kw) -> tuple[int, str, bytes]:
    r = client.get(f"/images/{image_id}/similar" + (f"?{query}" if query else ""), **kw)
    return r.status_code, r.headers.get("content-type", ""), r.content


def _routed() -> None:
    raise HTTPException(418, "reached the route")


def test_the_lane_answers_exactly_what_the_route_answers(engine: Engine, ids: list[int]) -> None:
    with client(engine, fast_lane=True) as fast, client(engine, fast_lane=False) as routed:
        for image_id in [*ids[:3], ids[-1], 0, 987_654, -1, 2**63 - 1, 10**30, "007", "abc"]:
            for query in PLAIN + ROUTED:
                a, b = _get(fast, image_id, query), _get(routed, image_id, query)
                assert a == b, (image_id, query, a, b)
        status, kind, body = _get(fast, ids[0], "k=4")
        assert status == 200 and kind == "application/json" and body.count(b'"id"') == 5  # the query and 4 hits


def test_the_lane_answers_plain_queries_itself_and_leaves_the_rest_to_the_route(engine: Engine, ids: list[int]) -> None:
    """With the route's parameter dependency made to fail, whatever reaches the route gets a 418."""
    image_id = ids[0]
    with client(engine, fast_lane=True) as fast, client(engine, fast_lane=False) as off:
        for c in (fast, off):
            c.app.dependency_overrides[get_paging] = _routed
        for query in PLAIN:
            assert _get(fast, image_id, query)[0] == 200, query
            assert _get(off, image_id, query)[0] == 418, query
        for query in ROUTED:
            assert _get(fast, image_id, query)[0] == 418, query
        assert _get(fast, 987_654, "k=3")[0] == 418  # an unknown id: the route says what is wrong
        assert fast.post(f"/images/{image_id}/similar?k=3").status_code == 405  # only GET takes the lane


def test_the_lane_checks_the_token(engine: Engine, ids: list[int]) -> None:
    url = f"/images/{ids[0]}/similar?k=3"
    with client(engine, fast_lane=True, api_token=TOKEN) as c:
        for header in (None, "Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer "):
            r = c.get(url, headers={"Authorization": header} if header else {})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", header
        for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "):
            assert c.get(url, headers={"Authorization": header}).status_code == 200
        c.app.dependency_overrides[get_paging] = _routed
        assert c.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200  # the lane's answer
        assert c.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401  # the route's


def test_the_lane_and_the_route_have_the_same_bounds(engine: Engine, ids: list[int]) -> None:
    """The documented bounds (literal numbers: the API's contract) are what both paths enforce:
    a request at a bound is answered, one just past it gets the route's 422, lane on or off."""
    with client(engine, fast_lane=True) as fast, client(engine, fast_lane=False) as routed:
        spec = fast.get("/openapi.json").json()["paths"]["/images/{image_id}/similar"]["get"]
        schema = {p["name"]: p["schema"] for p in spec["parameters"]}
        assert (schema["k"]["minimum"], schema["k"]["maximum"]) == (1, 1000)
        assert (schema["offset"]["minimum"], schema["offset"]["maximum"]) == (0, 100_000)
        similarity = schema["min_similarity"]["anyOf"][0]
        assert (similarity["minimum"], similarity["maximum"]) == (-1, 1)
        inside = ["k=1", "k=1000", "offset=0&k=1", "offset=100000&k=1", "k=1&min_similarity=-1", "k=1&min_similarity=1"]
        outside = ["k=0", "k=1001", "offset=-1&k=1", "offset=100001&k=1", "k=1&min_similarity=-1.01",
                   "k=1&min_similarity=1.01"]  # fmt: skip
        for c in (fast, routed):
            for query in inside:
                assert _get(c, ids[0], query)[0] == 200, query
            for query in outside:
                assert _get(c, ids[0], query)[0] == 422, query
