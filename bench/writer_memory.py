"""The writer's peak memory while it publishes an on-disk index (issue 16): what a `lookalike index`
run at scale holds beyond the store it opened.

    nice -n 5 .venv/bin/python bench/writer_memory.py [--n 1000000] [--dim 240] [--repos .,/tmp/old]
        [--dir /tmp]

For each checkout in `--repos` (this one by default; another, for example a ``git worktree`` of an
older commit, to compare side by side on the same machine), a fresh process imports `indexer` from
that checkout and:

1. writes `--n` autoencoder-like unit vectors (bench/neighbours.py's generator) into a segment store,
   checkpointed in 10 batches, then opens the store again as the writer does (nothing pending);
2. resets the process's peak RSS (``/proc/self/clear_refs``), publishes the store as ``ivfpq-disk``
   (indexer/vectors.py ``publish``: train, encode into on-disk lists, tune nprobe and the re-rank
   depth against exact search; no neighbour table, no catalog) and reads the peak (``VmHWM``).

The figures are the peak growth over the RSS before the publish (``VmHWM``: anonymous memory and
the file pages the publish mapped) and the peak growth of the anonymous part alone (sampled every
20 ms: copies of vectors, a flat index), the memory the writer cannot give back under pressure. Prints a table, writes
bench/results/writer_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(repo: Path, n: int, dim: int, work: Path) -> dict:
    """Steps 1 and 2 in this process, with `indexer` imported from `repo`."""
    sys.path.insert(0, str(repo))
    import numpy as np

    import indexer
    from indexer.layout import SEGMENTS
    from indexer.publish import publish
    from indexer.segments import SegmentStore
    from indexer.vectors import plan_index

    if not Path(indexer.__file__).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"indexer imported from {indexer.__file__}, not from {repo}")
    sys.path.append(str(REPO / "bench"))  # after `indexer`: bench modules put this checkout first
    from neighbours import vectors as autoencoder_like

    idx = work / "index"
    store = SegmentStore.open(idx / SEGMENTS, dim)
    step = -(-n // 10)
    for b, start in enumerate(range(0, n, step)):
        count = min(step, n - start)
        store.add(
            np.arange(start + 1, start + count + 1, dtype=np.int64),
            autoencoder_like(count, dim, np.random.default_rng(b)),
        )
        store.save(seq=b + 1)
    del store
    store = SegmentStore.open(idx / SEGMENTS, dim)
    before = _status()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now
    peak_anon = [before["RssAnon"]]
    done = threading.Event()

    def sample() -> None:  # VmHWM does not say which kind of page the peak was: sample the anonymous part
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], _status()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    manifest = publish(idx, store, plan_index(len(store), dim, "ivfpq-disk"), "bench", None, neighbours_k=0)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    after = _status()
    return {
        "repo": str(repo),
        "n": n,
        "dim": dim,
        "store_bytes": n * dim * 4,
        "rss_before": before["VmRSS"],
        "peak": after["VmHWM"],
        "peak_growth": after["VmHWM"] - before["VmRSS"],
        "anon_before": before["RssAnon"],
        "peak_anon_growth": peak_anon[0] - before["RssAnon"],
        "rss_after": after,
        "publish_s": round(seconds, 1),
        "index_type": manifest.index_type,
        "reason": manifest.reason,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        repo, n, dim, work = sys.argv[2:6]
        print(json.dumps(child(Path(repo), int(n), int(dim), Path(work))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=240)
    ap.add_argument("--repos", default=str(REPO), help="comma list of checkouts to import indexer from")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "writer_memory.json")
    args = ap.parse_args()
    rows = []
    for repo in args.repos.split(","):
        with tempfile.TemporaryDirectory(dir=args.dir) as work:
            cmd = [sys.executable, __file__, "--child", str(Path(repo).resolve()), str(args.n), str(args.dim), work]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| checkout | vectors | store MB | RSS before MB | peak growth MB (anonymous, sampled) | publish s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['repo']} | {r['n']:,} | {r['store_bytes'] / 1e6:,.0f} | {r['rss_before'] / 1e6:,.0f} |"
            f" {r['peak_growth'] / 1e6:,.0f} ({r['peak_anon_growth'] / 1e6:,.0f}) | {r['publish_s']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
