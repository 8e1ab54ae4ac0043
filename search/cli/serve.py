"""`lookalike serve`: the HTTP API and web page on one index."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .common import UsageError, index_for, user_errors

if TYPE_CHECKING:
    from search.api.settings import Settings


@user_errors
def serve(
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    host: str | None = typer.Option(None, help="Address to bind [default: 127.0.0.1, this machine only]."),
    port: int | None = typer.Option(None, help="Port [default: 8000]."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
    allow_writes: bool = typer.Option(
        False,
        "--allow-writes",
        help="Let clients resolve duplicates (move files into the index's quarantine and back) and dismiss "
        "groups; needs LOOKALIKE_API_TOKEN [default: off, or LOOKALIKE_ALLOW_WRITES].",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=64,
        help="Server processes on the one port, each opening the index itself (memory-mapped, so they "
        "share its pages) [default: 1, or LOOKALIKE_WORKERS].",
    ),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Also keep the index current, as `lookalike up` does: index the folder it was made from again "
        "whenever images there are added, changed, moved or deleted.",
    ),
) -> None:
    """Serve the search API and web page (LOOKALIKE_* environment variables set the defaults)."""
    index = index_for(index_dir)
    settings = server_settings(index, host, port, device, allow_writes=allow_writes, workers=workers)
    if not watch:
        serve_index(settings)
        return
    from indexer.watch import FolderChanges

    folder = indexed_folder(index)
    sock = bind(settings.host, settings.port)
    try:
        changes = FolderChanges(folder, index).start()
    except BaseException:
        sock.close()
        raise
    serve_watching(settings, sock, folder, index, changes, device)


def serve_watching(
    settings: Settings,
    sock: socket.socket,
    folder: Path,
    index_dir: Path | None,
    changes: Any,
    device: str | None,
    off: str = "",
) -> None:
    """:func:`serve_index` with the watch loop beside the server (when `changes` is not None, a
    started indexer.watch ``FolderChanges``); the watch stops with the server. `off`: how to turn
    the watch off, for its line."""
    from .watching import watch_beside_server

    try:
        if changes is not None:
            watch_beside_server(folder, index_dir, changes, device)
            typer.echo(f"watching {folder}: changed images are indexed as they change{off}")
        serve_index(settings, sock)
    finally:
        if changes is not None:
            changes.close()


def indexed_folder(index: Path) -> Path:
    """The folder `index` was made from (its catalog records it), which must still be there."""
    from indexer import Catalog

    catalog = Catalog.for_directory(index, read_only=True)
    try:
        root = catalog.get_meta("root")
    finally:
        catalog.close()
    if not root or not Path(root).is_dir():
        raise UsageError(f"--watch: the folder {index} was made from ({root or 'not recorded'}) is not a folder here")
    return Path(root)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything slow happens: a busy port is reported at
    once, with what to do, instead of after indexing and a traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "pick another with --port N" if exc.errno == errno.EADDRINUSE else "check --host"
        raise UsageError(f"cannot serve on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    sock.set_inheritable(True)
    return sock


def server_settings(
    index: Path,
    host: str | None,
    port: int | None,
    device: str | None,
    *,
    allow_writes: bool = False,
    workers: int | None = None,
) -> Settings:
    """The settings a server would run with (LOOKALIKE_* variables, then these options), checked."""
    from search.api.settings import Settings

    options = {"host": host, "port": port, "device": device, "workers": workers}
    overrides = {k: v for k, v in options.items() if v is not None}
    if allow_writes:  # the flag only switches writes on; LOOKALIKE_ALLOW_WRITES=1 does too
        overrides["allow_writes"] = True
    settings = Settings(index=index, **overrides)
    if settings.allow_writes and not settings.api_token:
        raise UsageError("--allow-writes needs a token: set LOOKALIKE_API_TOKEN too, clients then send it")
    return settings


def serve_index(settings: Settings, sock: socket.socket | None = None) -> None:
    """Serve `settings.index` on `sock` (bound here if not given) until Ctrl+C, in
    `settings.workers` processes (search/api/server.py)."""
    from search.api.server import run_server

    sock = sock or bind(settings.host, settings.port)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        typer.echo(
            f"warning: serving on {settings.host} without LOOKALIKE_API_TOKEN: anyone who can reach it can search",
            err=True,
        )
    writes = "  writes ON: /duplicates/resolve moves files" if settings.allow_writes else ""
    workers = f" by {settings.workers} workers" if settings.workers > 1 else ""
    typer.echo(f"serving {settings.index} at http://{settings.host}:{settings.port}/{workers}  (Ctrl+C stops){writes}")
    try:
        code = run_server(settings, sock)
    finally:
        sock.close()
    if code:
        raise typer.Exit(code)
