"""What `index --watch`, `up` and `serve --watch` share: a line a run of the watch loop, `up`'s
forgiving start, and the loop run beside a server (indexer/watch.py does the watching)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import typer


def echo_watch_run(run: Any) -> None:
    """One line on stderr for each run of the watch loop (indexer/watch.py ``WatchRun``)."""
    typer.echo(watch_line(run), err=True)


def watch_line(run: Any) -> str:
    """What one run of the watch loop did, in a line, with the time of day."""
    now = time.strftime("%H:%M:%S")
    if run.error is not None:
        again = "; trying again shortly" if run.retry else ""
        return f"{now} {run.changes} change(s) seen, not indexed: {run.error}{again}"
    s = run.summary
    counts = (("added", s.added), ("updated", s.updated), ("moved", s.moved), ("removed", s.removed))
    counts += (("failed", len(s.failed)),)
    done = ", ".join(f"{n} {what}" for what, n in counts if n) or "nothing to do"
    failed = "".join(f"\n  failed {path}: {why}" for path, why in s.failed[:10])
    if len(s.failed) > 10:
        failed += f"\n  ... and {len(s.failed) - 10} more failed"
    note = f"\n{outgrown_note(s)}" if s.outgrown_now else ""  # once, on the run that crosses the line
    return f"{now} {run.changes} change(s) seen: {done}; {s.total} indexed ({s.duration_s:.1f} s){failed}{note}"


def outgrown_note(summary: Any) -> str:
    """What to do when the folder has outgrown its model (IndexSummary.outgrown)."""
    return (
        f"note: the model was fitted to {summary.model_images:,} images and the index now holds {summary.total:,}; "
        f"to fit one to all of them: `lookalike train {summary.root} --out NEWMODEL`, then "
        f"`lookalike index {summary.root} --model NEWMODEL --reembed`"
    )


def start_watching(folder: Path) -> Any:
    """`up`'s watch, on by default: where the folder cannot be watched, it serves all the same, and says so."""
    from indexer.watch import FolderChanges, WatchError

    try:
        return FolderChanges(folder).start()
    except WatchError as exc:
        typer.echo(f"warning: {exc}; serving without keeping the index current (--no-watch: no warning)", err=True)
        return None


def watch_beside_server(folder: Path, index_dir: Path | None, changes: Any, device: str | None) -> None:
    """Run the watch loop in a daemon thread while the server runs in this one. A run cut short
    when the server stops is finished by the next one (a kill at any point is safe)."""
    loop = threading.Thread(target=_keep_current, args=(folder, index_dir, changes, device), name="lookalike-reindex")
    loop.daemon = True
    loop.start()


def _keep_current(folder: Path, index_dir: Path | None, changes: Any, device: str | None) -> None:
    """The loop; a failure of the watch itself ends it with a line, not a traceback."""
    from indexer.watch import WatchError, keep_current

    try:
        keep_current(folder, index_dir, changes=changes, on_run=echo_watch_run, device=device)
    except WatchError as exc:
        typer.echo(f"error: {exc}; the index is no longer kept current (run `lookalike index` to update it)", err=True)
