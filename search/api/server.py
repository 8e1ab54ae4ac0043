"""The uvicorn configuration of a server process, one or several on one port (``--workers N``).

Everything a process needs is made in :meth:`ServerConfig.load`, which uvicorn calls in the
process that serves: the app (whose lifespan opens the engine), the header-deadline protocol,
malloc's settings and the access log's level. So one worker and N workers run the same code:
with N, uvicorn's own supervisor (``uvicorn.supervisors.Multiprocess``) starts N spawned
processes that share the listening socket the parent bound, pickles this config (settings
included) into each, restarts a worker that dies and stops them all on Ctrl+C or SIGTERM.

What each worker holds on its own: its engine (which follows new index generations by itself),
its connection limit (``max_connections`` is per worker), its decode slots and its one model
inference at a time. The index files are memory-mapped read-only, so the page cache holds one
copy of the vectors, the neighbour table and the hit rows for all workers.
"""

from __future__ import annotations

import copy
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..engine import default_decode_slots
from .settings import Settings

#: How long the supervisor waits for a worker to answer its health ping before it kills and
#: replaces it. uvicorn's default is 5 s; a worker opening a large index generation, or
#: importing torch on a busy machine, can be slow to answer without being stuck.
WORKER_HEALTHCHECK_S = 30.0


class ServerConfig(uvicorn.Config):
    """uvicorn's Config for a lookalike server over `settings.index`; picklable (module level, settings
    only), so that uvicorn can hand it to spawned workers."""

    def __init__(self, settings: Settings) -> None:
        workers = settings.workers
        if workers > 1 and settings.decode_slots is None:
            # The default (one decode per core) is the machine's: share it out, so N workers
            # together still decode about as many uploads at once as one would (~300 MB each).
            settings = settings.model_copy(update={"decode_slots": max(1, default_decode_slots() // workers)})
        self.settings = settings
        log_config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
        if workers > 1:  # which worker said it: each line carries its process id
            for formatter in log_config["formatters"].values():
                formatter["fmt"] = formatter["fmt"].replace("%(levelprefix)s", "%(levelprefix)s [%(process)d]", 1)
        super().__init__(
            "lookalike",  # a placeholder: load_app() builds the app from the settings
            workers=workers,
            log_config=log_config,
            log_level="warning",  # keeps uvicorn's start-up chatter out; the access log has its own switch
            access_log=settings.access_log,
            http="httptools",  # replaced by the header-deadline protocol in load() where httptools is there
            timeout_keep_alive=settings.keep_alive_s,
            limit_concurrency=settings.max_connections,  # per process: N workers take N times this
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )

    def load_app(self) -> Any:
        from . import create_app

        return create_app(self.settings)

    def load(self) -> None:
        from .malloc import tune_malloc
        from .protocol import guarded_protocol

        tune_malloc()  # before the threads that serve queries first allocate (search/api/malloc.py)
        protocol = guarded_protocol(self.settings.header_timeout_s)
        self.http = protocol or "auto"
        super().load()
        if self.settings.access_log:
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)


def run_server(settings: Settings, sock: socket.socket) -> int:
    """Serve on the bound `sock` until Ctrl+C or SIGTERM: in this process, or in `settings.workers`
    processes under uvicorn's supervisor. Returns 0, or uvicorn's start-up failure code when a
    worker could not start (the supervisor then stops the others)."""
    config = ServerConfig(settings)
    if settings.workers == 1:
        # The socket itself, not its fd: uvicorn reopens an fd as AF_UNIX, and asyncio then
        # leaves Nagle's algorithm on for every TCP connection accepted from it (a response's
        # head and body written apart waited ~40 ms for the client's delayed ACK).
        uvicorn.Server(config).run(sockets=[sock])
        return 0
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    # The supervisor reports at INFO (a worker started, died and was replaced, stopped); the
    # workers set their own levels again when they start.
    logging.getLogger("uvicorn.error").setLevel(logging.INFO)
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return STARTUP_FAILURE if failed else 0
