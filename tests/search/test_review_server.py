"""Review end to end: the HTTP API on a real `lookalike serve`, and SIGKILL in the middle of a batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

from encoder.errors import ConfigError
from search.api import Settings, create_app
from search.review import recover, restore
from search.review.moves import journal_path

from .conftest import TOKEN, Server, run_server
from .test_review import COPY, Q60, SMALL, Review, review  # noqa: F401  (the fixture)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(server: Server, path: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(server: Server, path: str) -> dict:
    status, body = server.get(path, AUTH)
    assert status == 200, body
    return json.loads(body)


def near_identical(server: Server, reviewed: bool = False) -> set[frozenset[str]]:
    out = get(server, f"/reports/duplicates?tier=near-identical&reviewed={str(reviewed).lower()}")
    return {frozenset([g["keeper"]["path"], *(m["path"] for m in g["others"])]) for g in out["groups"]}


def wait_for_generation(server: Server, above: int) -> None:
    deadline = time.monotonic() + 60
    while get(server, "/stats")["generation"] <= above:
        assert time.monotonic() < deadline, "the server did not switch to the new index"
        time.sleep(0.2)


def test_resolve_dismiss_reindex_restore_on_a_real_server(review: Review) -> None:  # noqa: F811
    ids = review.ids()
    p0, p1 = frozenset({"orig/p0.jpg", SMALL}), frozenset({"orig/p1.jpg", Q60})
    env = {"LOOKALIKE_ALLOW_WRITES": "1", "LOOKALIKE_API_TOKEN": TOKEN}
    with run_server(review.index, env) as server:
        assert {p0, p1} <= near_identical(server)
        group = {"tier": "near-identical", "keeper_id": ids["orig/p0.jpg"], "member_ids": [ids[SMALL]]}
        assert post(server, "/duplicates/resolve", group)[0] == 401
        status, batch = post(server, "/duplicates/resolve", group, AUTH)
        assert status == 200, batch
        assert [f["path"] for f in batch["files"]] == [SMALL] and not (review.folder / SMALL).exists()
        assert (review.index / batch["files"][0]["quarantine_path"]).is_file()
        assert p0 not in near_identical(server) and p1 in near_identical(server)

        other = {"tier": "near-identical", "keeper_id": ids["orig/p1.jpg"], "member_ids": [ids[Q60]]}
        status, body = post(server, "/duplicates/dismiss", other, AUTH)
        assert status == 200 and body["new_pairs"] == 1
        assert {p0, p1} & near_identical(server) == set()
        assert p1 in near_identical(server, reviewed=True)
        assert get(server, "/duplicates/dismissed")["pairs"][0]["tier"] == "near-identical"

        (review.folder / COPY).write_bytes((review.folder / COPY).read_bytes() + b"\0")
        exact = {"tier": "exact", "keeper_id": ids["copies/p2 copy.jpg"], "member_ids": [ids[COPY]]}
        status, body = post(server, "/duplicates/resolve", exact, AUTH)
        assert status == 409 and "changed since it was indexed" in body["detail"]
        assert (review.folder / COPY).exists()
        status, body = post(server, "/duplicates/resolve", {**exact, "member_ids": [10**9]}, AUTH)
        assert status == 404

        generation = get(server, "/stats")["generation"]
        review.reindex()
        wait_for_generation(server, generation)
        assert SMALL not in review.ids()
        assert {p0, p1} & near_identical(server) == set()  # resolved and dismissed, across the re-index
        [listed] = get(server, "/duplicates/batches")["batches"]
        assert listed["batch"] == batch["batch"]

        status, body = post(server, "/duplicates/restore", {"batch": batch["batch"]}, AUTH)
        assert status == 200 and body["restored"]["restored_at"]
        assert (review.folder / SMALL).is_file()
        assert post(server, "/duplicates/restore", {"batch": batch["batch"]}, AUTH)[0] == 404
        assert post(server, "/duplicates/restore", {"batch": "../../etc"}, AUTH)[0] == 400
        assert get(server, "/duplicates/batches")["batches"] == []

        generation = get(server, "/stats")["generation"]
        review.reindex()
        wait_for_generation(server, generation)
        assert p0 in near_identical(server) and p1 not in near_identical(server)  # undone; still dismissed


def test_writes_are_off_without_the_flag(app_client: Callable, review: Review) -> None:  # noqa: F811
    ids = review.ids()
    body = {"tier": "exact", "keeper_id": ids["copies/p2 copy.jpg"], "member_ids": [ids[COPY]]}
    with app_client(api_token=TOKEN) as c:
        res = c.post("/duplicates/resolve", json=body, headers=AUTH)
        assert res.status_code == 403 and "--allow-writes" in res.json()["detail"]
        assert c.post("/duplicates/restore", json={"batch": "x"}, headers=AUTH).status_code == 403
        assert c.get("/duplicates/batches", headers=AUTH).status_code == 200
        spec = c.get("/openapi.json").json()["paths"]["/duplicates/resolve"]["post"]
        assert {"401", "403", "404", "409"} <= set(spec["responses"])
        assert spec["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchOut")
    with pytest.raises(ConfigError, match="token"):
        create_app(Settings(index=review.index, allow_writes=True))
    assert (review.folder / COPY).exists()


# ---------------------------------------------------------------- kills

STALLING_CLI = """
import os, sys, time
from pathlib import Path
import search.review.moves as moves
where, marker = os.environ["STALL"], Path(os.environ["MARKER"])

def stall():
    marker.write_text("stalled")
    time.sleep(600)

if where.startswith("move:"):  # after the n-th file moved, before the catalog records the batch
    real, n, done = moves.move_file, int(where[5:]), []
    def move_file(src, dst):
        real(src, dst)
        done.append(dst)
        if len(done) == n:
            stall()
    moves.move_file = move_file
else:  # after the catalog committed, before the journal is removed
    moves.finish = lambda journal: stall()
from search.cli.main import app
sys.argv = ["lookalike", *sys.argv[1:]]
app()
"""


def kill_when_stalled(tmp: Path, stall: str, *args: str) -> None:
    marker = tmp / f"stalled-{stall.replace(':', '')}-{args[0]}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "STALL": stall, "MARKER": str(marker), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLING_CLI, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("never reached the stall point: " + proc.stdout.read().decode())
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigkill_mid_batch_loses_nothing(review: Review, tmp_path: Path) -> None:  # noqa: F811
    moved = (SMALL, Q60, COPY)
    original = {p: (review.folder / p).read_bytes() for p in moved}
    idx = str(review.index)

    def quarantined(batch: str) -> dict[str, bytes]:
        base = review.index / "quarantine" / batch
        return {p: (base / p).read_bytes() for p in moved if (base / p).exists()}

    # 1. Killed after the first of three moves, before the catalog recorded anything: rolled back.
    kill_when_stalled(tmp_path, "move:1", "dedupe", "--index", idx, "--apply")
    [journal] = (review.index / "quarantine").glob("*.journal")
    batch = journal.stem
    assert len(quarantined(batch)) == 1 and review.quarantine_rows() == []
    [line] = recover(review.index)
    assert "1 file(s) put back" in line
    assert {p: (review.folder / p).read_bytes() for p in moved} == original
    assert not journal.exists() and not (review.index / "quarantine" / batch).exists()

    # 2. Killed after the catalog committed, before the journal went: the batch stands.
    kill_when_stalled(tmp_path, "finish", "dedupe", "--index", idx, "--apply")
    [(batch, _, _), *_] = rows = review.quarantine_rows()
    assert len(rows) == 3 and journal_path(review.index, batch).exists()
    [line] = recover(review.index)
    assert "had committed" in line and quarantined(batch) == original
    assert not any((review.folder / p).exists() for p in moved)

    # 3. Restore killed after one file went back: it goes back into the quarantine, to be restored again.
    kill_when_stalled(tmp_path, "move:1", "restore", batch, "--index", idx, "--apply")
    assert sum((review.folder / p).exists() for p in moved) == 1
    [line] = recover(review.index)
    assert "restore" in line and quarantined(batch) == original
    assert [r[2] for r in review.quarantine_rows()] == [0, 0, 0]
    restore(review.index, batch)
    assert {p: (review.folder / p).read_bytes() for p in moved} == original
    assert list((review.index / "quarantine").iterdir()) == []


def test_lookalike_index_recovers_a_killed_review_before_it_walks(review: Review, tmp_path: Path) -> None:  # noqa: F811
    """Killed after the first of three moves, before the catalog recorded anything: the next
    `lookalike index` puts the file back first, so the walk sees it where it was and keeps its row."""
    moved = (SMALL, Q60, COPY)
    original = {p: (review.folder / p).read_bytes() for p in moved}
    before = dict(review.ids())
    kill_when_stalled(tmp_path, "move:1", "dedupe", "--index", str(review.index), "--apply")
    assert sum((review.folder / p).exists() for p in moved) == 2  # one file sits in the quarantine
    run = subprocess.run(
        [sys.executable, "-m", "search", "index", str(review.folder), "--index", str(review.index)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "recovered an interrupted review operation" in run.stderr and "put back" in run.stderr
    assert {p: (review.folder / p).read_bytes() for p in moved} == original
    assert review.ids() == before  # same ids: nothing was taken for deleted and re-added
