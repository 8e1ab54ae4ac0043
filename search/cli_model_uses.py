"""Commands that use a trained model directly: denoise, reconstruct, generate, evaluate."""

from __future__ import annotations

from search.cli import app  # noqa: F401
