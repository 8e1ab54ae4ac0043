"""The ceiling for bench/search_latency.py: trivial FastAPI JSON endpoints, served by
uvicorn exactly as `lookalike serve` serves the real app (same defaults, log level warning).

    python bench/trivial_app.py PORT

- ``GET /healthz``: ``async def``, a constant JSON answer on the event loop;
- ``GET /healthz-sync``: the same as a plain ``def``, which FastAPI runs in its
  threadpool (one hop out and back per request).
"""

from __future__ import annotations

import sys

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz_async() -> dict:
    return {"status": "ok"}


@app.get("/healthz-sync")
def healthz_sync() -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
