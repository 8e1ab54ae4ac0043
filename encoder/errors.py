"""Errors a user can fix. Kept free of heavy imports so anything can catch them cheaply."""

from __future__ import annotations

import enum


class LookalikeError(Exception):
    """Base of every error lookalike raises for bad input or a bad state on disk.

    The CLI turns these into a one-line message; anything else is a bug.
    """


class LoadFailure(str, enum.Enum):
    """Why an image could not be loaded: what a caller branches on (an HTTP status, a retry),
    where ``ImageLoadError.reason`` is the sentence for a person."""

    NOT_FOUND = "not_found"  # no such file
    NOT_A_FILE = "not_a_file"  # a directory
    UNREADABLE = "unreadable"  # the file is there but cannot be read (permissions, I/O error)
    EMPTY = "empty"  # nothing to decode: 0 bytes, or an image 0 pixels wide or high
    NOT_AN_IMAGE = "not_an_image"  # no image format Pillow recognises
    TOO_LARGE = "too_large"  # over the pixel limit, or a decompression bomb
    TRUNCATED = "truncated"  # the data stops before the image ends
    CORRUPT = "corrupt"  # a recognised format whose data cannot be decoded
    OUT_OF_MEMORY = "out_of_memory"  # decoding ran out of memory


class ImageLoadError(LookalikeError):
    """An image could not be decoded. The message names the file and the reason; `kind` says
    which of the :class:`LoadFailure` cases it is."""

    def __init__(self, source: str, reason: str, *, kind: LoadFailure) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.kind = kind


class ConfigError(LookalikeError, ValueError):
    """A setting is unknown or out of range (a model kind, a size, a device...).

    Also a ValueError, which is what a bad argument is; the CLI reports it in one line
    because it is a LookalikeError, while a plain ValueError stays a bug with its traceback."""


class CheckpointError(LookalikeError):
    """A model directory is missing, incomplete or inconsistent."""


class TrainError(LookalikeError):
    """Training cannot start or go on (too few images, bad resume state...)."""
