"""Errors a user can fix. Kept free of heavy imports so anything can catch them cheaply."""

from __future__ import annotations


class LookalikeError(Exception):
    """Base of every error lookalike raises for bad input or a bad state on disk.

    The CLI turns these into a one-line message; anything else is a bug.
    """


class ImageLoadError(LookalikeError):
    """An image could not be decoded. The message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class CheckpointError(LookalikeError):
    """A model directory is missing, incomplete or inconsistent."""


class TrainError(LookalikeError):
    """Training cannot start or go on (too few images, bad resume state...)."""
