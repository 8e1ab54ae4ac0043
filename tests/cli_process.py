"""Run the `lookalike` command in a process of its own, without paying for torch's import each time.

The kill tests run `lookalike index` dozens of times and SIGKILL it at named points of a write
(``LOOKALIKE_TEST_KILL_AT``). A new interpreter spends ~1.8 s of each run importing torch and
faiss before it does anything, which was most of those tests' time. Here each run is a child of a
multiprocessing fork server that imported them once, before any thread pool started (so the fork
is safe): still a process of its own, with its own pid, memory and file descriptors, that a
SIGKILL ends alone, mid-write, and the command run from the same entry point as
``python -m search``, with the environment and working directory given.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

#: What the fork server imports once; every run starts from a copy of it.
PRELOAD = ["numpy", "torch", "faiss", "sqlalchemy", "PIL.Image", "encoder", "indexer", "search.cli"]

_context: mp.context.ForkServerContext | None = None


def _forkserver() -> mp.context.ForkServerContext:
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, patch: dict[str, object]) -> None:
    """The command, as `python -m search ARGV` would run it; output to the file `out`."""
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["lookalike", *argv]
    code = 0
    try:
        for name, value in patch.items():
            module, attr = name.rsplit(".", 1)
            setattr(importlib.import_module(module), attr, value)
        from search.cli import app

        app(argv, prog_name="lookalike")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what an interpreter's exit runs; a multiprocessing child skips it
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_cli(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | Path,
    patch: Mapping[str, object] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`lookalike ARGV` in a new process; returncode -9 when it was SIGKILLed, stdout holds its
    output and stderr together (as ``stderr=STDOUT``). `patch`: module attributes set in that
    process before the command runs, ``{"indexer.delta.DELTA_ABOVE": 1}``."""
    with tempfile.TemporaryDirectory(prefix="lookalike-cli-") as tmp:
        out = Path(tmp) / "output"
        proc = _forkserver().Process(target=_child, args=(list(argv), dict(env), str(cwd), str(out), dict(patch or {})))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["lookalike", *argv], timeout)
        output = out.read_bytes() if out.exists() else b""
        return subprocess.CompletedProcess(["lookalike", *argv], proc.exitcode, output, b"")
