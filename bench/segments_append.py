"""Adding 1,000 vectors to a 1M-vector store: what a checkpoint writes with segments, against the
single-file store it replaces (indexer/segments.py; issue 16, item 5's second target: < 5%).

    nice -n 5 .venv/bin/python bench/segments_append.py [--n 1000000] [--dim 240] [--add 1000] [--dir /tmp]

Steps, each timed, with the bytes it wrote (the sizes of the files it created, and this process's
``/proc/self/io`` write counters: ``wchar`` is what went through write(), ``write_bytes`` what the
kernel sent to storage):

1. build: `--n` autoencoder-like unit vectors (bench/neighbours.py's generator) added through the
   store API in 10 batches, a checkpoint after each (10 segments);
2. merge: the 10 segments merged into one (on demand: what a full merge costs at this size);
3. open: the writer's open (checksums verified) and a reader's (sizes only, memory-mapped);
4. append: `--add` new vectors, then a checkpoint: the figure the target is about;
5. tail merge: 16 more such checkpoints, then the policy's merge of the small segments (the base
   segment is left alone);
6. get: 1,000 random ids read by id from the memory-mapped segments (a re-rank's access pattern);
7. publish (`--publish TYPE`, default ivfpq-disk; `none` skips it): the store published as an index of
   that type (indexer/vectors.py ``publish``, no neighbour table, no catalog), then `--add` more
   vectors, a checkpoint and a publish again: what a ``lookalike index`` run that adds them writes.
   A publish writes ``vectors.faiss`` only for a flat index now; the flat file that every publish
   used to write is then written once more, as the before. The second publish reuses the index
   with a delta (indexer/delta.py) when it may; the same publish is then made once more with the
   index made again (``allow_delta=False``), as it was before deltas, and queries are timed on the
   index alone and with its delta;
8. baseline: the same `--n` + `--add` vectors in today's single-file store (``IndexIDMap2(IndexFlatIP)``),
   saved whole, as every checkpoint did before segments.

Prints a table, writes JSON to bench/results/segments_append/segments_append.json. Every file it
makes lives in a temporary folder under `--dir`, removed at the end (they are ~1 GB each at 1M).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
from common import RESULTS, command_line, describe_machine, machine, max_rss_mib, table, write_json

from indexer import ondisk
from indexer.delta import DELTA, DELTA_MAX, HIDDEN_MAX_SHARE, Delta, DeltaIndex, read_delta
from indexer.exact import read_mapped
from indexer.layout import SEARCH
from indexer.manifest import Manifest
from indexer.publish import publish
from indexer.segments import MAX_SEGMENTS, SegmentStore
from indexer.vectors import VectorStore, plan_index


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Autoencoder-like unit vectors: a common component plus anisotropic noise (as bench/neighbours.py)."""
    common = np.random.default_rng(0).standard_normal(dim).astype(np.float32) * 3
    scales = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    x = common + rng.standard_normal((n, dim)).astype(np.float32) * scales
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def io_counters() -> dict[str, int]:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def tree_files(folder: Path) -> dict[int, tuple[str, int]]:
    """inode -> (first path relative to `folder`, size) of every file: a file hard-linked into a
    generation is one file."""
    files: dict[int, tuple[str, int]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            files.setdefault(st.st_ino, (str(p.relative_to(folder)), st.st_size))
    return files


@contextmanager
def measure(folder: Path, out: dict) -> Iterator[None]:
    """Fill `out` with the seconds a block took, the bytes of the files it created or replaced
    under `folder` (new inodes, each counted once), and the /proc/self/io write counters' growth."""
    before = set(tree_files(folder))
    before_io = io_counters()
    t0 = time.perf_counter()
    yield
    out["seconds"] = round(time.perf_counter() - t0, 3)
    after_io = io_counters()
    new = {name: size for ino, (name, size) in tree_files(folder).items() if ino not in before}
    out["files_written"] = len(new)
    out["bytes_written"] = sum(new.values())
    out["files"] = dict(sorted(new.items(), key=lambda kv: -kv[1])[:8])  # the largest, by name
    for key in ("wchar", "write_bytes"):
        if key in after_io:
            out[key] = after_io[key] - before_io.get(key, 0)


def step(name: str, folder: Path, results: dict, fn: Callable[[], object]) -> object:
    out: dict = {}
    with measure(folder, out):
        value = fn()
    results[name] = out
    print(f"{name:>22}: {out}", flush=True)
    return value


def publish_steps(
    store: SegmentStore, work: Path, dim: int, add: int, kind: str, rng: np.random.Generator, r: dict
) -> None:
    """Publish the store (its index directory is `work`: the store is ``work/segments``) as `kind`,
    then add `add` vectors, checkpoint and publish again, as a ``lookalike index`` run does."""
    first: Manifest = step(
        f"publish {kind} (first)",
        work,
        r,
        lambda: publish(work, store, plan_index(len(store), dim, kind), "bench", None, neighbours_k=0),
    )
    start = int(store.ids().max()) + 1

    def run() -> Manifest:
        store.add(np.arange(start, start + add), vectors(add, dim, rng))
        store.save(seq=1_000)
        store.merge_if_due()
        return publish(work, store, plan_index(len(store), dim, kind), "bench", first, neighbours_k=0)

    second: Manifest = step(f"add {add:,}: checkpoint + publish {kind}", work, r, run)
    r[f"add {add:,}: checkpoint + publish {kind}"].update(
        index_type=second.index_type, vectors=len(store), delta=second.delta
    )
    query_steps(work, store, second, dim, rng, r)
    # What the same publish wrote before deltas (indexer/delta.py): the search index made again.
    rebuilt = step(
        f"publish {kind}, index made again (no delta)",
        work,
        r,
        lambda: publish(
            work, store, plan_index(len(store), dim, kind), "bench", second, neighbours_k=0, allow_delta=False
        ),
    )
    r[f"publish {kind}, index made again (no delta)"].update(delta=rebuilt.delta)
    copy = work / "flat-copy.faiss"
    step("before: + vectors.faiss", work, r, lambda: store.write_flat(copy))
    copy.unlink()


def query_steps(
    work: Path, store: SegmentStore, published: Manifest, dim: int, rng: np.random.Generator, r: dict
) -> None:
    """Per-query cost (one thread, p50 of 500 stored vectors as queries) of the published index
    alone and with its delta, and of the delta's exact scan at its bound (DELTA_MAX vectors)."""
    if not published.delta:
        return
    faiss.omp_set_num_threads(1)
    files = published.files(work)
    base = read_mapped(files / SEARCH, published.params)
    change = read_delta(files / DELTA)
    index = DeltaIndex(base, change, store.get(change.search))
    queries = store.get(rng.choice(store.ids(), 500, replace=False))
    rerank = int(published.params.get("rerank", ondisk.RERANK))

    def p50(fn: Callable[[np.ndarray], object]) -> float:
        times = []
        for q in queries:
            t0 = time.perf_counter()
            fn(q[None, :])
            times.append(time.perf_counter() - t0)
        return round(float(np.median(times)) * 1000, 3)

    def ask(ix: object) -> Callable[[np.ndarray], object]:
        if published.index_type == ondisk.ONDISK:
            return lambda q: ondisk.search(ix, q, 10, store.get, rerank)
        return lambda q: ix.search(q, 10)

    bound = vectors(DELTA_MAX, dim, rng)
    # The most a delta may hide (HIDDEN_MAX_SHARE of the base), as ids the ID selector must skip.
    hide = np.sort(rng.choice(store.ids(), int(HIDDEN_MAX_SHARE * base.ntotal), replace=False))
    hiding = DeltaIndex(base, Delta(change.search, hide), store.get(change.search))
    r["query p50 ms (1 thread)"] = {
        "base alone": p50(ask(base)),
        f"base + delta ({len(change.search):,} exact, {len(change.hide):,} hidden)": p50(ask(index)),
        f"base + delta ({len(change.search):,} exact, {len(hide):,} hidden: the bound)": p50(ask(hiding)),
        f"exact scan of {DELTA_MAX:,} vectors (the delta's bound)": p50(lambda q: bound @ q[0]),
    }
    # Recall@10 against an exact search of what is live, with and without the hidden bound.
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    sample = queries[:200]
    cases = (("index alone (without the delta's ids)", base, change.search), ("with the hidden bound", hiding, hide))
    for name, ix, hidden in cases:
        live = np.setdiff1d(store.ids(), hidden)
        _, truth = faiss.knn(sample, store.get(live), 10, metric=faiss.METRIC_INNER_PRODUCT)
        found = np.stack([ask(ix)(q[None, :])[1][0] for q in sample])
        got = np.mean([len(set(f) & set(live[t])) / 10 for f, t in zip(found, truth, strict=True)])
        r.setdefault("recall@10 (200 queries)", {})[name] = round(float(got), 4)


def bench(n: int, dim: int, add: int, work: Path, kind: str = "none") -> dict:
    rng = np.random.default_rng(1)
    seg_dir, flat_dir = work / "segments", work / "flat"
    seg_dir.mkdir()
    flat_dir.mkdir()
    r: dict = {"n": n, "dim": dim, "add": add}
    store = SegmentStore.open(seg_dir, dim)
    batch = max(1, n // 10)

    def build() -> None:
        for seq, start in enumerate(range(0, n, batch), 1):
            store.add(np.arange(start, min(n, start + batch)), vectors(min(n, start + batch) - start, dim, rng))
            store.save(seq=seq)

    step("build (10 checkpoints)", seg_dir, r, build)
    step("merge all", seg_dir, r, store.merge)
    reopened = step("open (writer, crc)", seg_dir, r, lambda: SegmentStore.open(seg_dir, dim))
    step("open (reader, mmap)", seg_dir, r, lambda: SegmentStore.open(seg_dir, dim, writable=False))
    store = reopened
    new = vectors(add, dim, rng)
    store.add(np.arange(n, n + add), new)
    step("append: checkpoint", seg_dir, r, lambda: store.save(seq=100))
    r["append: checkpoint"]["merged"] = store.merge_if_due()
    seq = 101
    for _ in range(MAX_SEGMENTS - 1):
        store.add(np.arange(n + seq * add, n + (seq + 1) * add), vectors(add, dim, rng))
        store.save(seq=seq)
        seq += 1
    segments_before = len(store.segments)
    merged = step("tail merge (policy)", seg_dir, r, store.merge_if_due)
    r["tail merge (policy)"].update(merged=merged, segments_before=segments_before, segments_after=len(store.segments))
    reader = SegmentStore.open(seg_dir, dim, writable=False)
    ids = rng.choice(reader.ids(), 1000, replace=False)
    got = step("get 1,000 by id", seg_dir, r, lambda: reader.get(ids))
    assert np.array_equal(got, store.get(ids)) and np.array_equal(store.get(np.arange(n, n + add)), new)
    if kind != "none":
        publish_steps(store, work, dim, add, kind, rng, r)

    flat = VectorStore(dim)
    rng = np.random.default_rng(1)
    for start in range(0, n, batch):
        flat.add(np.arange(start, min(n, start + batch)), vectors(min(n, start + batch) - start, dim, rng))
    flat.save(flat_dir / "vectors.faiss")
    flat.add(np.arange(n, n + add), new)
    step("baseline: full rewrite", flat_dir, r, lambda: flat.save(flat_dir / "vectors.faiss"))
    append, base = r["append: checkpoint"], r["baseline: full rewrite"]
    if kind != "none":
        now, extra = r[f"add {add:,}: checkpoint + publish {kind}"], r["before: + vectors.faiss"]
        r["run_now_vs_before_bytes"] = round(now["bytes_written"] / (now["bytes_written"] + extra["bytes_written"]), 4)
    r["append_vs_rewrite_bytes"] = round(append["bytes_written"] / base["bytes_written"], 6)
    if base.get("write_bytes"):
        r["append_vs_rewrite_write_bytes"] = round(append["write_bytes"] / base["write_bytes"], 6)
    r["append_vs_rewrite_seconds"] = round(append["seconds"] / base["seconds"], 4)
    r["max_rss"] = max_rss_mib()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=240)
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument(
        "--publish",
        default="ivfpq-disk",
        help="Index type to publish as (what a run adding --add writes); 'none' skips. ivfpq-disk: "
        "the one type whose update does not rebuild (HNSW at 1M takes ~26 min to build).",
    )
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="Where the temporary files go.")
    ap.add_argument("--out", type=Path, default=RESULTS / "segments_append" / "segments_append.json")
    args = ap.parse_args()
    info = machine(with_torch=False)
    print(describe_machine(info))
    work = Path(tempfile.mkdtemp(prefix="segments_append.", dir=args.dir))
    try:
        r = bench(args.n, args.dim, args.add, work, args.publish)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steps = [k for k, v in r.items() if isinstance(v, dict) and "seconds" in v]
    rows = [
        [k, r[k]["seconds"], r[k]["bytes_written"], r[k].get("write_bytes", ""), r[k]["files_written"]] for k in steps
    ]
    print()
    print(table(rows, ["step", "seconds", "bytes in files", "write_bytes (/proc)", "files"]))
    if "query p50 ms (1 thread)" in r:
        print("\n" + table(list(r["query p50 ms (1 thread)"].items()), ["query, p50 ms (1 thread)", "ms"]))
        print("\n" + table(list(r["recall@10 (200 queries)"].items()), ["recall@10, 200 stored vectors", "recall"]))
    if "run_now_vs_before_bytes" in r:
        print(
            f"\na run adding {args.add:,} (checkpoint + publish) wrote {r['run_now_vs_before_bytes']:.2%} "
            "of the bytes it wrote before (with vectors.faiss)"
        )
    print(
        f"\nappend {args.add:,} to {args.n:,}: the checkpoint wrote {r['append_vs_rewrite_bytes']:.4%} of a full "
        f"rewrite's bytes, in {r['append_vs_rewrite_seconds']:.2%} of its time"
    )
    path = write_json(args.out, {"command": command_line(), "machine": info, "results": r})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
