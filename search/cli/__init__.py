"""The `lookalike` command (the console script points at ``search.cli:app``)."""

from .main import app

__all__ = ["app"]
