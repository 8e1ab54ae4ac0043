"""`lookalike serve`: the HTTP API and web page on one index."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import UsageError, index_for, user_errors


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
) -> None:
    """Serve the search API and web page (LOOKALIKE_* environment variables set the defaults)."""
    serve_index(index_for(index_dir), host, port, device, allow_writes=allow_writes)


def serve_index(
    index: Path, host: str | None, port: int | None, device: str | None, *, allow_writes: bool = False
) -> None:
    import uvicorn

    from search.api import create_app
    from search.api.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "device": device}.items() if v is not None}
    if allow_writes:  # the flag only switches writes on; LOOKALIKE_ALLOW_WRITES=1 does too
        overrides["allow_writes"] = True
    settings = Settings(index=index, **overrides)
    if settings.allow_writes and not settings.api_token:
        raise UsageError("--allow-writes needs a token: set LOOKALIKE_API_TOKEN too, clients then send it")
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        typer.echo(
            f"warning: serving on {settings.host} without LOOKALIKE_API_TOKEN: anyone who can reach it can search",
            err=True,
        )
    writes = "  writes ON: /duplicates/resolve moves files" if settings.allow_writes else ""
    typer.echo(f"serving {index} at http://{settings.host}:{settings.port}/  (Ctrl+C stops){writes}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
