"""What can stop a review operation. Each is a LookalikeError: the CLI prints it in one line,
the HTTP API maps it to a status (search/api/routes/review.py)."""

from __future__ import annotations

from ..engine import EngineError


class ReviewError(EngineError):
    """A review operation cannot be done as asked (no such batch, nothing to move...)."""


class FileChanged(ReviewError):
    """A file is not what the catalog says (gone, resized, touched or rewritten since it was
    indexed): moving it on the strength of an old comparison could lose the wrong file."""


class OutsideFolder(ReviewError):
    """A path leads outside the indexed folder (a symlink, an odd catalog path): never touched."""


class Conflict(ReviewError):
    """The operation would overwrite something, or another writer holds the index."""
