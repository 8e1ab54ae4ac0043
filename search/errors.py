"""The search layer's errors, apart so that every module of it can raise them without a cycle."""

from __future__ import annotations

from encoder.errors import LookalikeError


class EngineError(LookalikeError):
    """The index cannot be opened or queried as asked."""


class NotFound(EngineError):
    """No indexed image has that id or path."""
