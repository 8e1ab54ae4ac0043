"""What every command shares: the user-error wrapper, logging, and finding an index."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import typer

# Only light imports at module level: decoding worker processes re-import the main
# module, and torch/faiss would cost each of them seconds and hundreds of MiB.
from encoder.errors import LookalikeError
from indexer.layout import MANIFEST, default_index_dir


class UsageError(LookalikeError):
    """Options that do not fit together (an IMAGE and --id, --label on a model without labels...)."""


#: Library errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    LookalikeError,
    FileNotFoundError,
    NotADirectoryError,
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a library error into `error: message` on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # "Loading faiss." on every command
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected": the watch loop says more


def index_for(folder_or_index: Path | None) -> Path:
    """Accept an index directory, or a folder that has one in .lookalike/."""
    path = folder_or_index or Path(".")
    if (path / MANIFEST).exists():
        return path
    if (default_index_dir(path) / MANIFEST).exists():
        return default_index_dir(path)
    raise FileNotFoundError(f"no index at {path} or {default_index_dir(path)}; run `lookalike index FOLDER` first")
