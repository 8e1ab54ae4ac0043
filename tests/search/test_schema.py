"""The OpenAPI schema against the answers: schemathesis runs every operation of a real `lookalike serve`
with every check it has, once with the token and once without.

Every status a request can get must be documented, with the body it documents: the 404 of an
unknown id, the 400/413/415 of an upload that is not an image, the middlewares' 401/408/413, the
403 of a write on a server without --allow-writes, and FastAPI's own 422s in their list shape.
The server is started without --allow-writes, on the `live` index (in a temporary folder),
so that no generated request can move a file. The examples are bounded and derandomized (the same
cases on every run) and nothing is written to a Hypothesis database in the repository.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from search.api import Settings, create_app
from search.api.routes.review import TierName
from search.reports import TIERS

from .conftest import TOKEN, Corpus, Server, run_server

AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Per operation: ~2,850 requests in all, under a minute on two cores (25 already found every mismatch).
MAX_EXAMPLES = 25

# Hypothesis keeps caches (unicode tables, string constants) in ./.hypothesis, and schemathesis draws
# its explicit examples while pytest collects: point it out of the repository before then.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "lookalike-hypothesis")

#: The schema of a server with a token, built in this process so that pytest can make one test per
#: operation at collection (schemathesis' fixture loader, `from_fixture`, fails on pytest 9: it sets
#: the private `Item._nodeid`). The app is only built, never started: no index is opened.
#: `test_the_server_serves_this_schema` checks that the real server's /openapi.json is this one.
SPEC: dict[str, Any] = create_app(Settings(index=Path("unused"), api_token=TOKEN)).openapi()


def _schema(headers: dict[str, str]) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "headers": headers,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "checks": {"enabled": True},  # all of them, as `--checks all` on the command line
            "operations": [
                {
                    # The schema says "a file" (format: binary) and cannot say "bytes Pillow can decode":
                    # random bytes are schema-valid, and their documented answer is 400 or 415 (or 413).
                    "include-path": "/search",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2XX", "400", "401", "403", "404", "413", "415"]
                        }
                    },
                }
            ],
        }
    )
    # A copy each: schemathesis may annotate the dict it is given.
    return schemathesis.openapi.from_dict(json.loads(json.dumps(SPEC)), config=config)


with_token = _schema(AUTH)
without_token = _schema({})


@pytest.fixture(scope="module")
def api(live: Corpus) -> Iterator[Server]:
    """A real server with the token set and writes off (every write answers 403)."""
    with run_server(live.index, {"LOOKALIKE_API_TOKEN": TOKEN, "LOOKALIKE_ACCESS_LOG": "0"}) as server:
        yield server


# Hypothesis' own settings: no per-example deadline (a first near-duplicate report takes a while on
# a shared CPU), the same examples every run, no example database written into the repository, and
# no health checks (too slow, too much filtering): on a busy machine they fail for reasons not the API's.
HYPOTHESIS = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck), print_blob=False
)


def test_the_server_serves_this_schema(api: Server) -> None:
    status, body = api.get("/openapi.json")
    assert status == 200 and json.loads(body) == SPEC


#: A parametrization of pytest's own on each schemathesis test, so that every operation's test gets
#: its own id: on pytest 9, schemathesis 4 names all of a test's operations alike
#: ("test_x" for "test_x[GET /stats]", "test_x[POST /search]", ...), and pytest-xdist, which
#: schedules tests by id, then ran only one operation of each test. With a parametrization of its own,
#: schemathesis puts the operation into the id ("test_x[GET /stats][served]").
SERVED = pytest.mark.parametrize("served", ["served"])


@with_token.parametrize()
@SERVED
@HYPOTHESIS
def test_every_answer_with_the_token_is_documented(case: schemathesis.Case, api: Server, served: str) -> None:
    case.call_and_validate(base_url=api.url)


@without_token.parametrize()
@SERVED
@HYPOTHESIS
def test_every_answer_without_the_token_is_documented(case: schemathesis.Case, api: Server, served: str) -> None:
    case.call_and_validate(base_url=api.url)


def test_every_operation_has_its_own_test_id(request: pytest.FixtureRequest) -> None:
    """Every test of this module has a unique id (see ``SERVED``), so a runner that schedules tests by
    id (pytest-xdist) runs each operation's test, and both tests cover every operation of the schema."""
    module = request.node.getparent(pytest.Module)
    assert module is not None
    items = [f for c in module.collect() for f in (c.collect() if isinstance(c, pytest.Collector) else [c])]
    ids = [i.nodeid for i in items]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)[:3]
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in with_token.get_all_operations()}
    for name in ("with", "without"):
        tested = {i.nodeid.split("[")[1].rstrip("]") for i in items if f"_{name}_the_token_" in i.nodeid}
        assert tested == operations, name


def test_the_tier_names_are_the_reports_tiers() -> None:
    """The routes' Literal is spelled out for type checkers; it must name exactly the tiers there are."""
    assert get_args(TierName) == ("exact", *(t.name for t in TIERS))
