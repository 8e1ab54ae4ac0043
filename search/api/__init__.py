"""The HTTP API and web page: ``create_app(settings, engine=None)`` builds the FastAPI app."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
