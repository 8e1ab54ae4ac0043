"""Server settings: one class, read from LOOKALIKE_* environment variables, overridable by CLI options."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoder import DEFAULT_MAX_PIXELS
from indexer.layout import DEFAULT_INDEX_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore")

    index: Path = Field(Path(DEFAULT_INDEX_DIR), description="Index directory to serve.")
    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 keeps the server on this machine.")
    port: int = Field(8000, ge=0, le=65535)
    api_token: str | None = Field(None, description="If set, data endpoints require 'Authorization: Bearer <token>'.")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted request body.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest accepted image, in pixels.")
    device: str | None = Field(None, description="cpu, cuda, mps [default: best available].")
    catalog_url: str | None = Field(None, description="SQLAlchemy URL of the catalog [default: the index's SQLite].")
    allow_writes: bool = Field(
        False,
        description="Let clients resolve near-duplicates (move files into the index's quarantine and back) "
        "and dismiss groups. Needs api_token as well; off, every write endpoint answers 403.",
    )
    header_timeout_s: float = Field(10.0, gt=0, description="A request's headers must arrive within this.")
    body_timeout_s: float = Field(
        30.0, gt=0, description="A body must arrive within this, plus 1 s per min_upload_rate bytes announced."
    )
    min_upload_rate: int = Field(100_000, ge=1, description="Bytes a second a slow upload is still allowed.")
    # Longer than the idle expiry of common clients (httpx 5 s, aiohttp 15 s): a client that
    # reuses a connection the server is closing at that moment loses the request
    # ("Server disconnected without sending a response"), and with httpx's 5 s against the
    # old 5 s here that race was met (bench/keepalive_race.py). Under the 30 s an idle
    # connection may be held.
    keep_alive_s: float = Field(20.0, gt=0, description="An idle kept-alive connection is closed after this.")
    max_connections: int = Field(
        256, ge=1, description="Connections at once, per worker process; more are answered 503."
    )
    decode_slots: int | None = Field(
        None, ge=1, description="Uploads decoded at once (each can take ~300 MB at the pixel cap) [default: cores]."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes answering on the one port, each with its own engine over the same "
        "memory-mapped index; each follows new index generations by itself.",
    )
    access_log: bool = Field(True, description="Log one line a request (uvicorn's access log) on stderr.")
    fast_lane: bool = Field(
        True,
        description="Answer plain by-id queries from the neighbour table before FastAPI's routing "
        "(the same bytes; about twice the throughput). Off: every request goes through the routes.",
    )
