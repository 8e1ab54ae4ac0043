"""Keep an index current while its folder changes (`lookalike index --watch`, `lookalike up`).

A watcher thread (watchfiles: inotify, FSEvents or ReadDirectoryChangesW; polling where none of
them works, or with ``WATCHFILES_FORCE_POLLING=1``) only notes *that* something under the folder
changed. The loop then runs :func:`~indexer.build.build_index` again, which finds *what* changed
by itself (size and mtime, content hashes for moves and copies), exactly as a user's second run
does. So the watcher never decides what goes into the index: an event that was missed, merged
or reported twice costs at most one more run, and the index is the one a manual run would make.

Runs never overlap and never queue up: changes that arrive during a run are counted and start
one more run after it. A run that finds the index locked by another writer (a manual
`lookalike index`, `dedupe --apply`) is tried again after ``retry_s``; a run that fails for any
other reason is reported and the next change tries again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoder.errors import LookalikeError
from encoder.image_files import is_image_name

from .build import IndexSummary, build_index
from .index_model import IndexLockedError
from .layout import default_index_dir

__all__ = ["FolderChanges", "WatchError", "WatchRun", "keep_current"]

log = logging.getLogger(__name__)

#: A burst of changes (a copy of many files) is taken as one once nothing new arrived for this long.
SETTLE_MS = 500
#: ... but never held back for longer than this while the burst goes on.
MAX_HOLD_MS = 5000
#: How often the watcher thread looks at the stop event when nothing changes.
POLL_STOP_MS = 200


class WatchError(LookalikeError):
    """The folder cannot be watched (gone, unreadable, out of watch handles)."""


@dataclass(frozen=True)
class WatchRun:
    """One run of the watch loop: how many changed paths started it, and its result or error."""

    changes: int
    summary: IndexSummary | None = None
    error: str | None = None
    retry: bool = False  # the run will be tried again without a new change (the index was locked)


class FolderChanges:
    """Changes under `folder` that matter to its index, counted by a watcher thread.

    Ignored, as the walk ignores them (encoder/image_files.py): hidden files and folders, the
    index directory (its own writes would otherwise start run after run), and files whose names
    are not image names. A path that no longer exists counts: it may have been an image or a
    folder of images, and a run that finds nothing to do is cheap.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        index_dir: str | os.PathLike | None = None,
        *,
        stop: threading.Event | None = None,
        settle_ms: int = SETTLE_MS,
        force_polling: bool | None = None,
    ) -> None:
        self.root = Path(folder).resolve()
        self.index_dir = Path(index_dir).resolve() if index_dir else default_index_dir(self.root)
        self.stop = stop or threading.Event()
        self.settle_ms = settle_ms
        self.force_polling = force_polling
        self._count = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def matters(self, path: str) -> bool:
        """Whether a change at `path` can change the index."""
        p = Path(path)
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return False
        if p == self.index_dir or self.index_dir in p.parents:
            return False
        if any(part.startswith(".") for part in rel.parts):
            return False
        return is_image_name(p) or not p.is_file()

    def start(self, timeout_s: float = 30.0) -> FolderChanges:
        """Start watching; return once the watch is in place (so no change after this is missed)."""
        if not self.root.is_dir():
            raise WatchError(f"{self.root}: not a folder")
        self._thread = threading.Thread(target=self._watch, name="lookalike-watch", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) and self._error is None:
            self.stop.set()
            raise WatchError(f"{self.root}: the file watcher did not start within {timeout_s:.0f} s")
        self._raise_if_failed()
        return self

    def _watch(self) -> None:
        from watchfiles import watch

        try:
            for batch in watch(
                self.root,
                watch_filter=lambda _change, path: self.matters(path),
                debounce=MAX_HOLD_MS,
                step=self.settle_ms,
                stop_event=self.stop,
                rust_timeout=POLL_STOP_MS,
                yield_on_timeout=True,  # the first (empty) yield says the watch is in place
                raise_interrupt=False,
                force_polling=self.force_polling,
                ignore_permission_denied=True,
            ):
                self._ready.set()
                if batch:
                    with self._lock:
                        self._count += len(batch)
                    self._wake.set()
        except BaseException as exc:  # noqa: BLE001 - reported to the loop, which raises it as a WatchError
            self._error = exc
        finally:
            self._ready.set()
            self._wake.set()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            # the usual cause on Linux is running out of inotify watches (one a folder)
            hint = "; WATCHFILES_FORCE_POLLING=1 polls the folder instead of asking the OS to notify"
            raise WatchError(f"stopped watching {self.root}: {self._error}{hint}") from self._error

    def wait(self, timeout_s: float | None = None) -> int:
        """Block until something changed (or `timeout_s` passed, or the watch stopped); return how
        many changed paths there were since the last call, and start counting afresh."""
        self._wake.wait(timeout_s)
        with self._lock:
            count, self._count = self._count, 0
            self._wake.clear()
        if not self.stop.is_set():
            self._raise_if_failed()
        return count

    def close(self, timeout_s: float = 5.0) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def keep_current(
    folder: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    *,
    changes: FolderChanges | None = None,
    stop: threading.Event | None = None,
    on_run: Callable[[WatchRun], None] | None = None,
    retry_s: float = 5.0,
    **build_options: Any,
) -> None:
    """Index `folder` again whenever it changes, until `stop` is set (or Ctrl+C).

    `changes`: a :class:`FolderChanges` already started, to count what changed before this call
    (`up` starts it before its first run, so nothing that changes while it trains is missed); by
    default one is started here. `on_run` is told of every run. `build_options` go to
    :func:`~indexer.build.build_index` (``progress`` defaults to off).
    """
    own = changes is None
    if changes is None:
        changes = FolderChanges(folder, index_dir, stop=stop).start()
    stop = changes.stop
    build_options.setdefault("progress", False)
    pending = 0
    try:
        while not stop.is_set():
            # with a run owed (the index was locked), wake up to try it again
            pending += changes.wait(retry_s if pending else None)
            if stop.is_set() or not pending:
                continue
            try:
                summary = build_index(folder, index_dir, **build_options)
            except IndexLockedError as exc:
                log.debug("index locked; trying again in %.0f s", retry_s)
                report = WatchRun(pending, error=str(exc), retry=True)
            except LookalikeError as exc:
                report, pending = WatchRun(pending, error=str(exc)), 0
            else:
                report, pending = WatchRun(pending, summary=summary), 0
            if on_run is not None:
                on_run(report)
    finally:
        if own:
            changes.close()
