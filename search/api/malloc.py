"""glibc malloc settings for the server process (a library, a CLI run or a test keeps the defaults)."""

from __future__ import annotations

import os

#: glibc malloc settings for a process that serves queries. By default glibc makes up to 8
#: arenas a core, one per thread that allocates at once, and raises its mmap threshold to the
#: size of the largest block freed (up to 32 MiB), so the ~20 MB upload bodies and decode
#: buffers of the threadpool's 40 threads end up inside arenas that keep them: RSS climbed
#: burst after burst and stayed there (1,283 -> 2,017 MiB over five bursts of 50 uploads of
#: 20 MB images). Two arenas and a fixed 1 MiB mmap threshold (a larger block is mapped on
#: its own and given back when freed) keep it flat (docs/benchmarks.md, "Decode memory").
MALLOC_ARENAS = 2
MALLOC_MMAP_THRESHOLD = 1 << 20
_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3  # mallopt parameter numbers, from glibc's malloc.h


def tune_malloc(arenas: int = MALLOC_ARENAS, mmap_threshold: int = MALLOC_MMAP_THRESHOLD) -> bool:
    """Set glibc's malloc for a long-running server (see MALLOC_ARENAS). True when set.

    A no-op outside glibc, and for each setting whose MALLOC_*_ environment variable is set
    (the user's choice wins). Arenas already made stay; call it before threads start.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = True
        if "MALLOC_ARENA_MAX" not in os.environ:
            ok &= bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            ok &= bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
        return ok
    except (OSError, AttributeError):
        return False
