"""indexer/watch.py on a real folder and a real file watcher: every change a user makes reaches the
index, the index's own writes start nothing, and a locked index is tried again."""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import sample_images

from indexer import Catalog, build_index
from indexer.build import index_lock
from indexer.watch import FolderChanges, WatchError, WatchRun, keep_current

#: Long enough for a settle window and a run on a loaded 2-core machine.
WAIT_S = 60.0


def indexed(idx: Path) -> set[str]:
    cat = Catalog.for_directory(idx)
    with cat.engine.connect() as c:
        paths = {p for (p,) in c.exec_driver_sql("SELECT path FROM images WHERE status = 'ok'")}
    cat.close()
    return paths


def on_disk(folder: Path, index: str = ".lookalike") -> set[str]:
    """The folder's PNGs, less hidden ones and the index's own (its model's pictures)."""
    paths = (p.relative_to(folder) for p in folder.rglob("*.png"))
    return {p.as_posix() for p in paths if p.parts[0] != index and not any(s.startswith(".") for s in p.parts)}


class Loop:
    """keep_current in a thread, its runs in a queue."""

    def __init__(self, folder: Path, model: Path, index_dir: Path | None = None) -> None:
        self.runs: queue.Queue[WatchRun] = queue.Queue()
        self.changes = FolderChanges(folder, index_dir, settle_ms=200).start()
        build_index(folder, index_dir, model_dir=model, progress=False)
        kwargs = {"changes": self.changes, "on_run": self.runs.put, "retry_s": 0.5}
        self.thread = threading.Thread(target=keep_current, args=(folder, index_dir), kwargs=kwargs)
        self.thread.start()

    def next_run(self, timeout: float = WAIT_S) -> WatchRun:
        return self.runs.get(timeout=timeout)

    def until(self, pred, timeout: float = WAIT_S) -> list[WatchRun]:
        """Runs until one satisfies `pred` (a burst may arrive as more than one run)."""
        seen: list[WatchRun] = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.runs.get(timeout=max(0.1, deadline - time.monotonic())))
            if pred(seen[-1]):
                return seen

    def close(self) -> None:
        self.changes.close()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pics"
    for src in sample_images(2, ("birds", "letters")):
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / src.parent.name / src.name)
    return root


@pytest.fixture
def loop(folder: Path, tiny_model: Path, torch_one_thread) -> Iterator[Loop]:
    running = Loop(folder, tiny_model)
    yield running
    running.close()


def test_every_kind_of_change_reaches_the_index(folder: Path, loop: Loop) -> None:
    idx = folder / ".lookalike"
    assert indexed(idx) == on_disk(folder)
    new = sample_images(3, ("chess",))
    for src in new:  # added: a burst of three
        shutil.copy(src, folder / src.name)
    runs = loop.until(lambda r: r.summary is not None and r.summary.total == 7)
    assert sum(r.summary.added for r in runs) == 3 and all(r.error is None for r in runs)
    assert indexed(idx) == on_disk(folder)

    before = indexed(idx)
    moved = sorted(before)[0]
    (folder / "elsewhere").mkdir()
    shutil.move(folder / moved, folder / "elsewhere" / Path(moved).name)  # moved: keeps its vector
    runs = loop.until(lambda r: r.summary is not None and r.summary.moved == 1)
    assert all(r.summary.added == 0 for r in runs if r.summary)
    assert indexed(idx) == on_disk(folder)

    gone = folder / sorted(on_disk(folder))[-1]
    gone.unlink()  # deleted
    loop.until(lambda r: r.summary is not None and r.summary.removed == 1)
    assert indexed(idx) == on_disk(folder)

    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a bad file: listed, the watch goes on
    run = loop.until(lambda r: r.summary is not None and r.summary.failed)[-1]
    assert [p for p, _ in run.summary.failed] == ["broken.png"]
    shutil.rmtree(folder / "elsewhere")  # a whole folder at once
    loop.until(lambda r: r.summary is not None and r.summary.removed == 1)
    assert indexed(idx) == on_disk(folder) - {"broken.png"}


def test_the_index_and_hidden_files_start_no_run(folder: Path, tiny_model: Path, torch_one_thread) -> None:
    """The loop's own writes (catalog, segments, generations, here in a folder `index` that is not
    hidden) must not start another run, or it would index for ever; hidden files and other names
    are not images to it."""
    loop = Loop(folder, tiny_model, folder / "index")
    try:
        shutil.copy(sample_images(1, ("chess",))[0], folder / "new.png")
        first = loop.next_run()
        assert first.summary is not None and first.summary.added == 1
        with pytest.raises(queue.Empty):  # the run above wrote a new generation: no run follows
            loop.next_run(timeout=3.0)
        (folder / ".hidden").mkdir()
        shutil.copy(sample_images(1, ("chess",))[0], folder / ".hidden" / "x.png")
        (folder / "notes.txt").write_text("not an image")
        (folder / "index" / "scratch.png").write_bytes(b"")
        with pytest.raises(queue.Empty):
            loop.next_run(timeout=3.0)
        assert indexed(folder / "index") == on_disk(folder, "index")
    finally:
        loop.close()


def test_a_locked_index_is_tried_again(folder: Path, loop: Loop) -> None:
    idx = folder / ".lookalike"
    with index_lock(idx):  # another writer, as a manual `lookalike index` would be
        shutil.copy(sample_images(1, ("chess",))[0], folder / "new.png")
        locked = loop.next_run()
        assert locked.retry and locked.summary is None and "another `lookalike index`" in locked.error
    # no new change: the owed run is tried again once the lock is free
    done = loop.until(lambda r: r.summary is not None)
    assert done[-1].summary.added == 1 and "new.png" in indexed(idx)


def test_what_matters(folder: Path, tmp_path: Path) -> None:
    changes = FolderChanges(folder)
    (folder / "notes.txt").write_text("x")
    assert changes.matters(str(folder / "birds" / "new.jpg"))
    assert changes.matters(str(folder / "gone-folder"))  # no longer there: may have held images
    assert not changes.matters(str(folder / "notes.txt"))
    assert not changes.matters(str(folder / ".cache" / "a.png"))
    assert not changes.matters(str(folder / ".lookalike" / "catalog.sqlite"))
    assert not changes.matters(str(tmp_path / "outside.png"))
    elsewhere = FolderChanges(folder, tmp_path / "idx")  # an index kept outside the folder
    assert not elsewhere.matters(str(tmp_path / "idx" / "segments" / "x"))
    assert elsewhere.matters(str(folder / ".lookalike2" / "x.png")) is False  # hidden all the same


def test_a_folder_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(WatchError, match="not a folder"):
        FolderChanges(tmp_path / "nope").start()


def test_polling_sees_changes_too(folder: Path) -> None:
    """Where the OS does not notify (network file systems): WATCHFILES_FORCE_POLLING=1, or force_polling."""
    changes = FolderChanges(folder, force_polling=True, settle_ms=100).start()
    try:
        assert changes.wait(0.5) == 0
        shutil.copy(sample_images(1, ("chess",))[0], folder / "new.png")
        assert changes.wait(WAIT_S) >= 1
    finally:
        changes.close()
