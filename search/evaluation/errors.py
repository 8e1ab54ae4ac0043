"""The one error an evaluation raises for input a user can fix."""

from __future__ import annotations

from encoder.errors import LookalikeError


class EvaluationError(LookalikeError):
    """The folder cannot be evaluated (too few images or labels, unknown label column...).

    A `LookalikeError`, so the CLI reports it as a one-line message rather than a traceback.
    """
