"""Small helpers shared by the benchmarks in bench/: timing, memory, machine, output.

Standard library only (torch is imported lazily where asked about), so a
benchmark's worker processes do not pay for it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# Benchmarks measure this checkout: put it first on the path (spawned workers inherit
# sys.path), so a stale or missing editable install cannot shadow a package.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------- time


@contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """`with timer() as elapsed: ...`; `elapsed()` gives the seconds so far, then the total once the block ends."""
    t0 = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - t0
    end.append(time.perf_counter())


def rate(count: float, seconds: float) -> float:
    """count / seconds, rounded for a table (0 when nothing was timed)."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


# ---------------------------------------------------------------- memory


def max_rss_mib() -> dict[str, float]:
    """Peak resident memory so far, in MiB: of this process, and of its largest waited-for child.

    ``ru_maxrss`` is KiB on Linux, bytes on macOS. RUSAGE_CHILDREN is the peak of
    the single largest child that has been waited for, not a sum over children.
    """
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"self_mib": round(own, 1), "largest_child_mib": round(kids, 1)}


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def tree_rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants now, in MiB (Linux /proc; 0 elsewhere)."""
    total, stack = 0, [pid or os.getpid()]
    while stack:
        p = stack.pop()
        total += _rss_kib(p)
        stack += _children(p)
    return round(total / 1024, 1)


class PeakTreeRSS:
    """Sample :func:`tree_rss_mib` in a background thread; `.peak_mib` is the largest sum seen.

    Unlike ``ru_maxrss`` this counts this process and its live workers *at the same
    time* (what the machine must actually hold). Shared pages count once per process,
    so it is an upper bound. Linux only: elsewhere `peak_mib` stays 0.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, tree_rss_mib())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakTreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, tree_rss_mib())


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def machine(with_torch: bool = True) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, load, library versions, GPU."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except ImportError:
        pass
    if with_torch:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(m: dict[str, Any]) -> str:
    """One line for a table header or a doc."""
    parts = [f"{m.get('cpu')}, {m.get('usable_cores')} cores", f"{m.get('memory_gib')} GiB RAM"]
    parts.append(f"GPU: {m['gpu']}" if m.get("gpu") else "no GPU")
    if m.get("load_average"):
        parts.append("load avg " + "/".join(str(x) for x in m["load_average"]))
    parts.append(f"Python {m.get('python')}")
    if m.get("torch"):
        parts.append(f"torch {m['torch']} ({m.get('torch_threads')} threads)")
    if m.get("pillow"):
        parts.append(f"Pillow {m['pillow']}")
    return "; ".join(parts)


# ---------------------------------------------------------------- output


def command_line() -> str:
    """The command that ran this benchmark, as one would type it from the repository root."""
    argv = list(sys.argv)
    with suppress(ValueError):
        argv[0] = os.path.relpath(argv[0], REPO)
    exe = sys.executable
    venv = REPO / ".venv" / "bin"
    if Path(exe).parent == venv:
        exe = ".venv/bin/python"
    return " ".join([exe, *argv])


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON (creating the folder); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return p


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.3g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], markdown: bool = False) -> str:
    """Format rows as an aligned text table (numbers right-aligned), or as a Markdown table."""
    rows = [list(row) + [None] * (len(header) - len(row)) for row in rows]
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) if rows else False for i in range(len(header))
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)])
