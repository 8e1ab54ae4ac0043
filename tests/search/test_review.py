"""Review and resolve duplicates: the library, the CLI and the HTTP API against a real server.

Every test builds its own small index (the files move): three distinct pictures, a resized
copy of one (near-identical), a recompressed copy of another, and a byte-identical copy.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import fill_folder, write_jpeg
from PIL import Image
from postgres import CATALOGS, url_for
from typer.testing import CliRunner

from indexer import Catalog, build_index
from search.cli import app
from search.engine import Engine
from search.reports import build_report
from search.review import (
    Conflict,
    FileChanged,
    OutsideFolder,
    batches,
    dismiss,
    plan_groups,
    plan_resolution,
    resolve,
    restore,
)
from search.review.moves import journal_path, quarantined_path

runner = CliRunner()
SMALL, Q60, COPY = "orig/p0_small.jpg", "orig/p1_q60.jpg", "orig/p2.jpg"  # what dedupe moves


@dataclass
class Review:
    folder: Path
    index: Path
    model: Path

    def reindex(self) -> None:
        build_index(self.folder, model_dir=self.model, progress=False, workers=1)

    def _query(self, sql: str) -> list[tuple]:
        """Rows of `sql` from the index's catalog, SQLite or PostgreSQL (the index records which)."""
        catalog = Catalog.for_directory(self.index, read_only=True)
        try:
            with catalog.engine.connect() as c:
                return [tuple(r) for r in c.exec_driver_sql(sql)]
        finally:
            catalog.close()

    def ids(self) -> dict[str, int]:
        return dict(self._query("SELECT path, id FROM images WHERE status = 'ok'"))

    def quarantine_rows(self) -> list[tuple]:
        q = "SELECT batch, path, restored_at IS NOT NULL FROM review_quarantine ORDER BY path"
        return [(b, p, int(restored)) for b, p, restored in self._query(q)]  # PostgreSQL answers a bool


#: For the tests that run on both catalogs: `@both_catalogs` makes `review` index into each.
both_catalogs = pytest.mark.parametrize("review", CATALOGS, indirect=True)


@pytest.fixture
def review(tmp_path: Path, search_model: Path, request: pytest.FixtureRequest) -> Review:
    """The folder indexed into its own SQLite catalog, or (`@both_catalogs`) into each kind in turn."""
    url = url_for(request, getattr(request, "param", "sqlite"), "review")
    folder = tmp_path / "images"
    fill_folder(folder, 2)
    for i in range(4):
        write_jpeg(folder / "orig" / f"p{i}.jpg", (128, 96), seed=10 + i)
    Image.open(folder / "orig/p0.jpg").resize((96, 72)).save(folder / SMALL, quality=85)
    Image.open(folder / "orig/p1.jpg").save(folder / Q60, quality=60)
    (folder / "copies").mkdir()
    shutil.copy2(folder / COPY, folder / "copies/p2 copy.jpg")  # first in path order: the exact group's keeper
    build_index(folder, model_dir=search_model, progress=False, workers=1, catalog_url=url)
    return Review(folder, folder / ".lookalike", search_model)


def duplicate_groups(engine: Engine, hide: bool = True) -> list:
    """Exact groups and the duplicate tiers' groups (not "similar": alike is not a duplicate, and
    which unrelated test images look alike depends on the model), as the report shows them."""
    from search.review import DUPLICATE_TIERS, hide_decided_in_report

    rep = build_report(engine)
    if hide:
        hide_decided_in_report(engine, rep)
    near = (g for tier, gs in rep.near.groups.items() if tier in DUPLICATE_TIERS for g in gs)
    return [*rep.exact, *near]


def paths_of(groups: list) -> set[frozenset[str]]:
    return {frozenset(m.path for m in g.members) for g in groups}


def open_engine(r: Review) -> Engine:
    return Engine(r.index, device="cpu", reload_check_s=0)


# ---------------------------------------------------------------- the library


def test_plan_keeps_the_keeper_and_moves_nothing(review: Review) -> None:
    engine = open_engine(review)
    try:
        groups = duplicate_groups(engine)
        plan = plan_groups(engine, groups)
    finally:
        engine.close()
    assert {frozenset({"orig/p0.jpg", SMALL}), frozenset({"orig/p1.jpg", Q60})} <= paths_of(groups)
    assert sorted(m.path for m in plan.moves) == sorted([SMALL, Q60, COPY])
    assert {m.path: m.keeper_path for m in plan.moves}[COPY] == "copies/p2 copy.jpg"
    assert all((review.folder / p).is_file() for p in (SMALL, Q60, COPY))
    assert not (review.index / "quarantine").exists()


@both_catalogs
def test_resolve_then_reindex_then_restore(review: Review) -> None:
    before = {p: (review.folder / p).read_bytes() for p in (SMALL, Q60, COPY)}
    mtimes = {p: (review.folder / p).stat().st_mtime_ns for p in before}
    engine = open_engine(review)
    try:
        batch = resolve(engine, plan_groups(engine, duplicate_groups(engine)).moves)
        for p, data in before.items():  # moved aside, relative path kept, bytes and mtime intact
            assert not (review.folder / p).exists()
            aside = review.index / "quarantine" / batch.batch / p
            assert aside.read_bytes() == data and aside.stat().st_mtime_ns == mtimes[p]
        assert review.quarantine_rows() == [(batch.batch, p, 0) for p in sorted(before)]
        assert not journal_path(review.index, batch.batch).exists()
        # Before any re-index the catalog still lists the moved files: the report leaves them out.
        assert duplicate_groups(engine) == []
        assert len(duplicate_groups(engine, hide=False)) == 3
        review.reindex()
        engine.reload()
        assert not set(before) & set(review.ids())  # the indexer never walks into the quarantine
        assert duplicate_groups(engine) == []
        [listed] = batches(engine.catalog)
        assert listed.batch == batch.batch and [f.path for f in listed.files] == sorted(before)

        [undone] = restore(review.index)  # the newest batch
        assert undone.batch == batch.batch
        for p, data in before.items():
            assert (review.folder / p).read_bytes() == data and (review.folder / p).stat().st_mtime_ns == mtimes[p]
        assert not (review.index / "quarantine" / batch.batch).exists()
        assert review.quarantine_rows() == [(batch.batch, p, 1) for p in sorted(before)]
        review.reindex()
        engine.reload()
        assert set(before) <= set(review.ids())
        assert {frozenset({"orig/p0.jpg", SMALL}), frozenset({"orig/p1.jpg", Q60})} <= paths_of(
            duplicate_groups(engine)
        )
    finally:
        engine.close()


def test_a_file_changed_since_indexed_is_refused(review: Review) -> None:
    ids = review.ids()
    engine = open_engine(review)
    try:
        member = review.folder / SMALL
        st = member.stat()
        data = bytearray(member.read_bytes())
        data[-3] ^= 0xFF  # same size, same mtime, other content: only the hash tells
        member.write_bytes(bytes(data))
        os.utime(member, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(FileChanged, match="content hash differs"):
            plan_resolution(engine, ids["orig/p0.jpg"], [ids[SMALL]], "near-identical")
        keeper = review.folder / "orig/p1.jpg"
        os.utime(keeper, ns=(keeper.stat().st_atime_ns, keeper.stat().st_mtime_ns + 10**9))
        with pytest.raises(FileChanged, match=r"orig/p1.jpg .*changed since it was indexed"):
            plan_resolution(engine, ids["orig/p1.jpg"], [ids[Q60]], "near-identical")  # the keeper counts too
        (review.folder / COPY).unlink()
        with pytest.raises(FileChanged, match="no longer on disk"):
            plan_resolution(engine, ids["copies/p2 copy.jpg"], [ids[COPY]], "exact")
        # In bulk the changed groups are skipped with the reason, the rest still planned.
        plan = plan_groups(engine, duplicate_groups(engine))
        assert plan.moves == [] and len(plan.skipped) == 3
    finally:
        engine.close()
    assert member.exists() and not (review.index / "quarantine").exists()


def test_a_path_outside_the_folder_is_never_touched(review: Review, tmp_path: Path) -> None:
    outside = write_jpeg(tmp_path / "outside" / "secret.jpg", (80, 60), seed=7)
    (review.folder / "link.jpg").symlink_to(outside)
    review.reindex()
    ids = review.ids()
    engine = open_engine(review)
    try:
        with pytest.raises(OutsideFolder, match="symbolic link"):
            plan_resolution(engine, ids["orig/p3.jpg"], [ids["link.jpg"]], "similar")
        with pytest.raises(OutsideFolder, match="symbolic link"):  # nor kept in place of a real file
            plan_resolution(engine, ids["link.jpg"], [ids["orig/p3.jpg"]], "similar")
    finally:
        engine.close()
    assert outside.exists() and (review.folder / "link.jpg").is_symlink()


@both_catalogs
def test_dismissed_group_stays_out_until_a_new_image_joins(review: Review) -> None:
    ids = review.ids()
    engine = open_engine(review)
    try:
        assert dismiss(engine, ids["orig/p0.jpg"], [ids[SMALL]], "near-identical") == 1
        assert dismiss(engine, ids["orig/p0.jpg"], [ids[SMALL]], "near-identical") == 0  # remembered once
        assert frozenset({"orig/p0.jpg", SMALL}) not in paths_of(duplicate_groups(engine))
        # Another copy of the picture joins: the group comes back, with the dismissed pair in it.
        Image.open(review.folder / "orig/p0.jpg").resize((112, 84)).save(review.folder / "orig/p0_mid.jpg")
        review.reindex()
        engine.reload()
        back = [g for g in duplicate_groups(engine) if "orig/p0_mid.jpg" in {m.path for m in g.members}]
        assert back and {"orig/p0.jpg", SMALL} <= {m.path for m in back[0].members}
        (review.folder / "orig/p0_mid.jpg").unlink()
        review.reindex()  # and without it the dismissal still holds, across re-indexing
        engine.reload()
        assert frozenset({"orig/p0.jpg", SMALL}) not in paths_of(duplicate_groups(engine))
        assert frozenset({"orig/p1.jpg", Q60}) in paths_of(duplicate_groups(engine))
    finally:
        engine.close()


def test_restore_refuses_to_overwrite(review: Review) -> None:
    ids = review.ids()
    engine = open_engine(review)
    try:
        batch = resolve(engine, plan_resolution(engine, ids["orig/p1.jpg"], [ids[Q60]], "near-identical"))
    finally:
        engine.close()
    (review.folder / Q60).write_bytes(b"someone else's file")
    with pytest.raises(Conflict, match="taken again"):
        restore(review.index, batch.batch)
    assert (review.folder / Q60).read_bytes() == b"someone else's file"
    assert quarantined_path(review.index, batch.batch, Q60).exists()


# ---------------------------------------------------------------- the CLI


@both_catalogs
def test_cli_dedupe_is_a_dry_run_until_apply(review: Review) -> None:
    idx = str(review.index)
    res = runner.invoke(app, ["dedupe", "--index", idx, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dry_run"] and out["batch"] is None
    assert sorted(m["path"] for m in out["moves"]) == sorted([COPY, SMALL, Q60])
    assert (review.folder / SMALL).exists()

    res = runner.invoke(app, ["dedupe", "--index", idx, "--tier", "similar", "--apply"])
    assert res.exit_code == 2 and "one group at a time" in res.output and (review.folder / SMALL).exists()

    res = runner.invoke(app, ["dedupe", "--index", idx, "--apply"])
    assert res.exit_code == 0, res.output
    assert "3 file(s) from 3 group(s) moved" in res.output and not (review.folder / SMALL).exists()
    batch = review.quarantine_rows()[0][0]
    assert "no duplicate groups left" in runner.invoke(app, ["dedupe", "--index", idx]).output

    res = runner.invoke(app, ["restore", "--index", idx])
    assert res.exit_code == 0 and "dry run" in res.output and not (review.folder / SMALL).exists()
    res = runner.invoke(app, ["restore", batch, "--index", idx, "--apply"])
    assert res.exit_code == 0, res.output
    assert all((review.folder / p).exists() for p in (SMALL, Q60, COPY))
    res = runner.invoke(app, ["restore", batch, "--index", idx, "--apply"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "no quarantined batch" in res.output


def test_cli_dismiss_one_group(review: Review) -> None:
    ids = review.ids()
    args = ["dedupe", "--index", str(review.index), "--keeper", str(ids["orig/p1.jpg"]), "--members", str(ids[Q60])]
    res = runner.invoke(app, [*args, "--dismiss"])
    assert res.exit_code == 0 and "not duplicates" in res.output
    res = runner.invoke(app, ["dedupe", "--index", str(review.index), "--json"])
    assert sorted(m["path"] for m in json.loads(res.stdout)["moves"]) == sorted([COPY, SMALL])


def test_serve_refuses_writes_without_a_token(review: Review, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_API_TOKEN", raising=False)
    res = runner.invoke(app, ["serve", "--index", str(review.index), "--allow-writes"])
    assert res.exit_code == 2 and "needs a token" in res.output
