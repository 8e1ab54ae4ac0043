"""`lookalike up` keeps the index it serves current, and `lookalike index --watch` runs until Ctrl+C:
both as real processes, on a real folder, the server over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, fill_folder, sample_images, train_tiny

from indexer import build_index

from .conftest import Server, _stop, free_port

WAIT_S = 90.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory, "watch-model")


@pytest.fixture
def folder(tmp_path: Path, model: Path) -> Path:
    """Six sample images, indexed with the tiny model (so `up` finds a model and trains none)."""
    root = fill_folder(tmp_path / "pics", 2, ("birds", "letters", "chess"))
    build_index(root, model_dir=model, progress=False)
    return root


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    with open(log, "wb") as out:
        argv = [sys.executable, "-m", "search", *args]
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out, preexec_fn=ctrl_c_default)


def ctrl_c_default() -> None:
    """In the child before it runs: SIGINT as a terminal delivers it. A runner started in the
    background (`cmd &` in a script) ignores SIGINT, its children inherit that, and Python then
    installs no KeyboardInterrupt handler: Ctrl+C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(pred: Callable[[], bool], what: str, log: Path, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; output:\n{log.read_text(errors='replace')}")


def test_up_serves_what_the_folder_holds_now(folder: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    proc = start(["up", str(folder), "--port", str(port), "--device", "cpu"], log)
    server = Server(f"http://127.0.0.1:{port}", port, proc)

    def stats() -> dict:
        status, body = server.get("/stats", timeout=5)
        assert status == 200
        return json.loads(body)

    try:
        wait_for(lambda: server.get("/healthz", timeout=2)[0] == 200, "the server", log)
        assert "watching" in log.read_text()
        first = stats()
        assert first["count"] == 6
        new = sample_images(1, ("planets",))[0]
        shutil.copy(new, folder / new.name)
        # "vectors": what the server searches, from the generation it has open (the catalog's
        # "count" moves first: rows are committed before the run publishes)
        wait_for(lambda: stats()["vectors"] == 7, "the added image to be served", log)
        after = stats()
        assert after["count"] == 7 and after["generation"] > first["generation"]
        status, body = server.get("/images?limit=50")
        assert status == 200 and new.name in body.decode()
        (folder / "letters").rename(folder / "letters-renamed")  # a folder renamed: its images move
        wait_for(lambda: "2 moved" in log.read_text(), "the run after the rename", log)
        assert b"letters-renamed/" in server.get("/images?limit=50")[1] and stats()["count"] == 7
    finally:
        _stop(proc)
    out = log.read_text()
    assert proc.returncode in (0, -signal.SIGTERM), out  # uvicorn raises the signal again once it stopped
    assert "Traceback" not in out


def test_index_watch_until_ctrl_c(folder: Path, tmp_path: Path) -> None:
    log = tmp_path / "index.log"
    proc = start(["index", str(folder), "--watch"], log)
    try:
        wait_for(lambda: "watching" in log.read_text(), "the watch to start", log)
        shutil.copy(sample_images(1, ("planets",))[0], folder / "new.png")
        wait_for(lambda: "1 added; 7 indexed" in log.read_text(), "the run after the change", log)
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        _stop(proc)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "stopped watching" in out and "Traceback" not in out


def test_serve_watch_keeps_an_index_kept_elsewhere_current(tmp_path: Path, model: Path) -> None:
    """`serve --watch` finds the folder in the index's catalog; here the index lives outside it."""
    folder = fill_folder(tmp_path / "pics", 2, ("birds", "letters"))
    index = tmp_path / "index"
    build_index(folder, index, model_dir=model, progress=False)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(["serve", "--index", str(index), "--port", str(port), "--device", "cpu", "--watch"], log)
    server = Server(f"http://127.0.0.1:{port}", port, proc)
    try:
        wait_for(lambda: server.get("/healthz", timeout=2)[0] == 200, "the server", log)
        assert json.loads(server.get("/stats")[1])["count"] == 4
        (folder / "birds" / sorted(p.name for p in (folder / "birds").iterdir())[0]).unlink()
        wait_for(lambda: "1 removed; 3 indexed" in log.read_text(), "the run after the deletion", log)
        wait_for(lambda: json.loads(server.get("/stats")[1])["vectors"] == 3, "the server to drop it", log)
    finally:
        _stop(proc)


def test_serve_watch_needs_the_folder(tmp_path: Path, model: Path) -> None:
    from typer.testing import CliRunner

    from search.cli import app

    folder = fill_folder(tmp_path / "pics", 1, ("birds", "letters"))
    index = tmp_path / "index"
    build_index(folder, index, model_dir=model, progress=False)
    shutil.rmtree(folder)
    res = CliRunner().invoke(app, ["serve", "--index", str(index), "--port", str(free_port()), "--watch"])
    assert res.exit_code == 2 and "--watch: the folder" in res.output and str(folder) in res.output


def test_up_serves_unwatched_where_the_folder_cannot_be_watched(tmp_path: Path, capsys) -> None:
    """`up` watches by default; where that fails it still serves, with a warning (not an error)."""
    from search.cli.watching import start_watching

    assert start_watching(tmp_path / "not-there") is None
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "not a folder" in err and "serving without keeping" in err


def test_a_folder_that_outgrows_its_model_is_told_once(tmp_path: Path, model: Path) -> None:
    """The tiny model was fitted to 9 images: at 36 (4x) the index says so, and a watch line says it once,
    on the run that crossed the line."""
    from indexer.run import OUTGROWN, IndexSummary
    from indexer.watch import WatchRun
    from search.cli.watching import watch_line

    fitted = json.loads((model / "config.json").read_text())["meta"]["images"]
    root = tmp_path / "pics"
    srcs = sample_images(
        4, ("birds", "letters", "chess", "clothes", "fish", "flowers", "roadsigns", "vegetables", "planets")
    )
    assert len(srcs) >= OUTGROWN * fitted
    for src in srcs[: OUTGROWN * fitted - 1]:
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / src.parent.name / src.name)
    first = build_index(root, model_dir=model, progress=False)
    assert first.model_images == fitted and first.total == OUTGROWN * fitted - 1 and not first.outgrown
    last = srcs[OUTGROWN * fitted - 1]
    shutil.copy(last, root / last.name)
    crossed = build_index(root, progress=False)
    assert crossed.outgrown and crossed.outgrown_now
    again = build_index(root, progress=False)
    assert again.outgrown and not again.outgrown_now
    line = watch_line(WatchRun(1, summary=crossed))
    assert f"note: the model was fitted to {fitted} images and the index now holds {OUTGROWN * fitted}" in line
    assert "--reembed" in line and "note:" not in watch_line(WatchRun(1, summary=again))
    assert not IndexSummary(root="r", index_dir="i", total=10**6).outgrown  # a model with no record: no note
    from typer.testing import CliRunner

    from search.cli import app

    res = CliRunner().invoke(app, ["index", str(root)])  # a manual run says it every time
    assert res.exit_code == 0 and f"note: the model was fitted to {fitted} images" in res.output
