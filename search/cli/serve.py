"""`lookalike serve`: the HTTP API and web page on one index."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import index_for, user_errors


@user_errors
def serve(
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    host: str | None = typer.Option(None, help="Address to bind [default: 127.0.0.1, this machine only]."),
    port: int | None = typer.Option(None, help="Port [default: 8000]."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Serve the search API and web page (LOOKALIKE_* environment variables set the defaults)."""
    serve_index(index_for(index_dir), host, port, device)


def serve_index(index: Path, host: str | None, port: int | None, device: str | None) -> None:
    import uvicorn

    from search.api import create_app
    from search.api.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "device": device}.items() if v is not None}
    settings = Settings(index=index, **overrides)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        typer.echo(
            f"warning: serving on {settings.host} without LOOKALIKE_API_TOKEN: anyone who can reach it can search",
            err=True,
        )
    typer.echo(f"serving {index} at http://{settings.host}:{settings.port}/  (Ctrl+C stops)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
