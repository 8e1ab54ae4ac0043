"""The on-disk search index (indexer/ondisk.py) at 1M, 3M and 10M synthetic 240-d vectors.

For each size: generate autoencoder-like vectors in chunks (clusters of uneven spread on an
anisotropic cloud, with planted near-duplicates; never more than one chunk in RAM), write them
as the memory-mapped float32 ``.npy`` that re-ranks read (as the store's float32), compute the exact top-10 of fresh
queries by brute force while generating, train IVF-PQ on a sample, encode chunk by chunk into
block files, merge them into one ``.ivfdata``; then tune (nprobe, rerank) on the pair ladder to
recall@10 >= 0.95 after the re-rank (indexer/ondisk_tune.py) in a process of its own, as the writer
does, and in a separate "server" process started cold (the files evicted from the page cache), with
madvise(MADV_RANDOM) on the float32 vectors as SegmentVectors does: open it (RSS), time 1,000 fresh
single queries (p50/p95, RSS anon / file after, and which files the file part maps).

--kinds builds and serves 60-byte PQ (pq), 120-byte PQ (pq120) and IVF-SQ8 (sq8) side by side;
--no-madvise serves each again without the advice; --centres 2000 at 1M packs the vectors as densely
as 10M does; --cgroup runs the servers in a memory cgroup (RSS, page cache included, held to its
limit). At --compare-at it also measures a float16 re-rank (it capped recall@10 at 0.93 here); with
--shards, shards of a quarter each, searched one after the other and merged, against the one index.

    nice -n 15 .venv/bin/python bench/ondisk_10m.py --sizes 1000000,3000000 --kinds pq,sq8 --no-madvise

Writes bench/results/ondisk/ondisk.json and prints a table. Big files go under --work and are
deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIM = 240
K = 10
CHUNK = 500_000
RESULTS = REPO / "bench" / "results" / "ondisk"


# ---------------------------------------------------------------- data


CENTRES = 20_000


class Generator:
    """Autoencoder-like unit vectors: a common direction and a decaying spectrum (as
    bench/reports_scale.py), clustered around 20k centres of uneven spread, 2% near-copies."""

    def __init__(self, seed: int = 0, n_centres: int = CENTRES) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.common = rng.standard_normal(DIM).astype(np.float32) * 3
        self.scales = np.geomspace(1.0, 0.05, DIM).astype(np.float32)
        self.centres = self.common + rng.standard_normal((n_centres, DIM)).astype(np.float32) * self.scales
        self.spread = rng.uniform(0.15, 0.6, n_centres).astype(np.float32)

    def chunk(self, start: int, n: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng((self.seed, stream, start))
        which = rng.integers(0, len(self.centres), n)
        x = self.centres[which] + self.spread[which, None] * rng.standard_normal((n, DIM), np.float32) * self.scales
        copies = rng.random(n) < 0.02  # a near-copy of the previous row (a resized or re-encoded image)
        copies[0] = False
        src = np.flatnonzero(copies) - 1
        x[copies] = x[src] + 0.03 * rng.standard_normal((len(src), DIM), np.float32) * self.scales
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def make_data(n: int, work: Path, gen: Generator, queries: np.ndarray, float16_copy: bool) -> dict:
    """Write vectors32.npy (and vectors16.npy) for ids 1..n; exact top-K of `queries` by brute force."""
    import faiss

    t0 = time.perf_counter()
    v32 = np.lib.format.open_memmap(work / "vectors32.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    v16 = (
        np.lib.format.open_memmap(work / "vectors16.npy", mode="w+", dtype=np.float16, shape=(n, DIM))
        if float16_copy
        else None
    )
    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.zeros((len(queries), K), np.int64)
    gt_s = 0.0
    for s in range(0, n, CHUNK):
        x = gen.chunk(s, min(CHUNK, n - s))
        v32[s : s + len(x)] = x
        if v16 is not None:
            v16[s : s + len(x)] = x
        t1 = time.perf_counter()
        sims, top = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)  # exact, float32
        cat_s = np.concatenate([best_s, sims], axis=1)
        cat_i = np.concatenate([best_i, top + s + 1], axis=1)
        order = np.argsort(-cat_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cat_s, order, 1), np.take_along_axis(cat_i, order, 1)
        gt_s += time.perf_counter() - t1
    v32.flush()
    del v16, v32
    np.save(work / "truth.npy", best_i)
    np.save(work / "queries.npy", queries)
    return {"generate_s": round(time.perf_counter() - t0 - gt_s, 1), "ground_truth_s": round(gt_s, 1)}


def chunks32(work: Path, n: int, shards: int = 1):
    """(ids, float32 vectors) in chunks of at most CHUNK, as many as a multiple of `shards`."""
    v = np.load(work / "vectors32.npy", mmap_mode="r")
    count = shards * int(np.ceil(n / (shards * CHUNK)))
    size = int(np.ceil(n / count))
    for s in range(0, n, size):
        e = min(n, s + size)
        yield np.arange(s + 1, e + 1, dtype=np.int64), np.asarray(v[s:e], dtype=np.float32)


# ---------------------------------------------------------------- build


def build(n: int, work: Path, kind: str = "pq", shards: int = 0) -> dict:
    """Train, encode into blocks, merge into one .ivfdata (and `shards` shard indexes from the same
    blocks, each a contiguous quarter of the ids). Returns timings and sizes."""
    import faiss

    from indexer import ondisk

    faiss.omp_set_num_threads(2)
    params = ondisk.ondisk_params(n, DIM)
    if kind == "pq120":  # finer codes: 2 dimensions per sub-quantiser, 120 bytes
        params["m"] = DIM // 2
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    sample = ondisk.training_sample(chunks32(work, n), n, params["nlist"])
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = ondisk.train(sample, {**params, "codes": "sq8" if kind == "sq8" else "pq"})  # as a publish trains
    t_train = time.perf_counter() - t0
    blocks_dir = out / "blocks"
    blocks_dir.mkdir()
    t0 = time.perf_counter()
    block_files, tables = [], []
    for ids, vecs in chunks32(work, n, max(1, shards)):
        block_files.append(blocks_dir / f"{len(block_files)}.faiss")
        tables.append(ondisk.encode_block(trained, ids, vecs, block_files[-1]))
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = ondisk.merge_blocks(faiss.clone_index(trained), block_files, out / ondisk.SEARCH_DATA)
    table = np.concatenate(tables)
    table.sort(order="id")
    ondisk.write(index, table, out)
    t_merge = time.perf_counter() - t0
    del index
    res = {
        "kind": kind,
        "params": params,
        "train_points": len(sample),
        "sample_s": round(t_sample, 1),
        "train_s": round(t_train, 1),
        "add_s": round(t_add, 1),
        "merge_s": round(t_merge, 1),
        "ivfdata_bytes": (out / ondisk.SEARCH_DATA).stat().st_size,
        "index_file_bytes": (out / "search.faiss").stat().st_size,
        "ids_file_bytes": (out / ondisk.SEARCH_IDS).stat().st_size,
    }
    per = int(np.ceil(len(block_files) / shards)) if shards else 0
    res["shards"] = shards
    for s in range(shards):
        part = block_files[s * per : (s + 1) * per]
        sdir = out / f"shard{s}"
        sdir.mkdir()
        t0 = time.perf_counter()
        shard = ondisk.merge_blocks(faiss.clone_index(trained), part, sdir / ondisk.SEARCH_DATA)
        faiss.write_index(shard, os.fspath(sdir / "search.faiss"))
        res.setdefault("shard_merge_s", []).append(round(time.perf_counter() - t0, 1))
        del shard
    shutil.rmtree(blocks_dir)
    return res


# ---------------------------------------------------------------- serve (a separate process)


def mapped(names: tuple[str, ...] = ("vectors32.npy", "vectors16.npy", "search.ivfdata")) -> dict:
    """Resident bytes of this process's mappings of the files named (from /proc/self/smaps): which
    part of RssFile is the float32 vectors (the re-rank) and which the lists (the scan)."""
    out: dict[str, int] = {}
    current = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            current = next((n for n in names if line.endswith(n)), None)
        elif current and line.startswith("Rss:"):
            out[current] = out.get(current, 0) + int(head[1]) * 1024
    return out


def rss() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def evict(path: Path) -> None:
    """Drop `path`'s pages from the page cache, so each server starts cold (as after a reboot) and
    runs with and without madvise do not inherit each other's resident pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def tune(work: Path, kind: str, vectors: str) -> dict:
    """What the writer does at a publish (a process of its own, as there): (nprobe, rerank) on the
    pair ladder, recall@10 of the first 200 queries after the re-rank (indexer/ondisk_tune.py). Kept
    out of the server process: its deepest re-rank reads 1,408 rows a query, which would leave
    most of the float32 file mapped in the server before its 1,000 timed queries."""
    import faiss

    from indexer import ondisk, ondisk_tune
    from indexer.vectors import NPROBE_LADDER, RECALL_TARGET

    faiss.omp_set_num_threads(1)
    index = ondisk.read(work / kind / "search.faiss")
    exact = np.load(work / f"{vectors}.npy", mmap_mode="r")
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    rows = min(200, len(queries))
    t0 = time.perf_counter()
    tuned = ondisk_tune.tune(
        index,
        queries[:rows],
        [set(t.tolist()) for t in truth[:rows]],
        lambda ids: np.asarray(exact[np.sort(ids) - 1], np.float32)[np.argsort(np.argsort(ids))],
        K,
        target=RECALL_TARGET,
        nprobe_ladder=NPROBE_LADDER,
    )
    return {
        "nprobe": tuned.nprobe,
        "rerank": tuned.rerank,
        "recall": tuned.recall,
        "measured": tuned.measured,
        "tune_s": round(time.perf_counter() - t0, 1),
    }


def serve(
    work: Path,
    kind: str,
    vectors: str,
    shards: int,
    n_queries: int,
    advise: bool = True,
    effort: tuple = (0, 0),
    pread: bool = False,
) -> dict:
    """What a server process does: open (mmap), answer single queries at the tuned `effort`
    ((nprobe, rerank); shards: nprobe on the ladder at the default depth). With `pread`, the re-rank
    reads its rows with pread as an advised SegmentStore does (indexer.rowio.pread_rows), not
    through the mapping."""
    import faiss

    from indexer import ondisk
    from indexer.rowio import advise_random, pread_rows, prefetch_rows
    from indexer.vectors import NPROBE_LADDER, RECALL_TARGET

    faiss.omp_set_num_threads(1)  # as the engine: one thread a query
    evict(work / f"{vectors}.npy")
    for data in (work / kind).rglob(ondisk.SEARCH_DATA):  # the lists too: the whole server starts cold
        evict(data)
    before = rss()
    t0 = time.perf_counter()
    paths = [work / kind / f"shard{s}" / "search.faiss" for s in range(shards)] or [work / kind / "search.faiss"]
    indexes = [ondisk.read(p) for p in paths]
    exact = np.load(work / f"{vectors}.npy", mmap_mode="r")
    advised = advise_random(exact) if advise else False  # as SegmentVectors does for the store's segments
    fd = os.open(work / f"{vectors}.npy", os.O_RDONLY) if pread else None
    open_s = time.perf_counter() - t0
    opened = rss()
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")

    def get(ids: np.ndarray) -> np.ndarray:
        if fd is not None:  # as SegmentStore.get from an advised store
            return pread_rows(exact, np.asarray(ids) - 1, None, fd)
        rows = np.sort(ids) - 1
        if advised:  # as SegmentStore.get from an advised store
            prefetch_rows(exact, rows)
        return np.asarray(exact[rows], np.float32)[np.argsort(np.argsort(ids))]

    tune_rows = min(200, len(queries))
    measured: list = []
    if len(indexes) == 1:
        nprobe, rerank = effort
    else:  # shards: nprobe alone, at the default depth per shard (the union is re-ranked)
        nprobe, rerank = NPROBE_LADDER[-1], ondisk.RERANK

    def query(q: np.ndarray) -> np.ndarray:
        if len(indexes) == 1:
            return ondisk.search(indexes[0], q, K, get, rerank)[1]
        # Shards: each returns its candidates, the union is re-ranked (as a coordinator would).
        depth = ondisk.candidates(K, rerank, indexes[0].ntotal)
        cand = np.concatenate([ix.search(q, depth)[1] for ix in indexes], axis=1)
        cand = cand[cand >= 0]
        s = get(cand) @ q[0]
        return cand[np.argsort(-s)[:K]][None]

    def recall(rows: range) -> float:
        hits = [len(set(query(queries[i : i + 1])[0].tolist()) & set(truth[i].tolist())) for i in rows]
        return float(np.mean(hits)) / K

    if len(indexes) > 1:
        nlist = faiss.extract_index_ivf(indexes[0]).nlist
        for p in [p for p in NPROBE_LADDER if p <= nlist]:
            for ix in indexes:
                faiss.extract_index_ivf(ix).nprobe = p
            r = recall(range(tune_rows))
            measured.append((p, rerank, round(r, 4)))
            nprobe = p
            if r >= RECALL_TARGET:
                break
    for ix in indexes:
        faiss.extract_index_ivf(ix).nprobe = nprobe
    lat = []
    # Fresh queries for the timing (not the 500 with truth twice over): RSS after them counts the rows
    # 1,000 different queries touch.
    timed = np.load(work / "timed.npy")[:n_queries]
    by_thousand = []  # RSS and p50 after each 1,000 queries: does the page cache settle?
    for i in range(n_queries):
        t = time.perf_counter()
        query(timed[i : i + 1])
        lat.append((time.perf_counter() - t) * 1000)
        if (i + 1) % 1000 == 0:
            by_thousand.append({"queries": i + 1, "p50_ms": round(float(np.median(lat[-1000:])), 2), **rss()})
    lat = np.array(lat)
    after = {**rss(), "mapped": mapped()}
    return {
        "kind": kind,
        "vectors": vectors,
        "shards": shards,
        "madvise_random": advised,
        "pread": pread,
        "open_s": round(open_s, 3),
        "rss_before": before,
        "rss_opened": opened,
        "rss_after": after,
        "measured": measured,
        "nprobe": nprobe,
        "rerank": rerank,
        "candidates": ondisk.candidates(K, rerank, int(indexes[0].ntotal)),
        "recall_at_10": round(recall(range(len(queries))), 4),
        "queries_timed": int(n_queries),
        "by_thousand": by_thousand,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "loadavg": os.getloadavg(),
    }


def serve_in_process(
    work: Path,
    kind: str,
    vectors: str = "vectors32",
    shards: int = 0,
    n_queries: int = 1000,
    advise: bool = True,
    tuned: dict | None = None,
    cgroup: Path | None = None,
    pread: bool = False,
):
    """Tune (a process of its own, unless `tuned` is given), then serve (another; in the memory
    `cgroup` directory if given, so the kernel holds its RSS, page cache included, to the cgroup's
    limit: the server within a memory budget, its re-rank reading from disk what the cache lost)."""
    if tuned is None:
        tuned = {"nprobe": 0, "rerank": 0}
    if not shards and not tuned["nprobe"]:
        cmd = [sys.executable, __file__, "--tune", str(work), kind, vectors]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        tuned = json.loads(out.stdout.strip().splitlines()[-1])
    cmd = [sys.executable, __file__, "--serve", str(work), kind, vectors, str(shards), str(n_queries), str(int(advise))]
    cmd += [str(tuned["nprobe"]), str(tuned["rerank"]), str(int(pread))]
    if cgroup is not None:  # join the cgroup, then become the server
        cmd = ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    res = {"tuning": tuned, **json.loads(out.stdout.strip().splitlines()[-1])}
    if cgroup is not None:
        limit = next(
            (cgroup / f).read_text().strip() for f in ("memory.max", "memory.limit_in_bytes") if (cgroup / f).exists()
        )
        res["cgroup_limit"] = limit
    return res


# ---------------------------------------------------------------- main


def run_size(n: int, args: argparse.Namespace, gen: Generator, queries: np.ndarray, first: bool) -> dict:
    work = args.work / (f"n{n}" if args.centres == CENTRES else f"n{n}_c{args.centres}")
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"n": n, "dim": DIM, "centres": args.centres, "loadavg_start": os.getloadavg()}
    timed = work / "timed.npy"  # fresh queries for the timing: not the 500 with truth
    have = np.load(timed) if timed.exists() else np.zeros((0, DIM), np.float32)
    if len(have) < max(1000, args.timed):  # more are appended: the first ones stay the same
        np.save(timed, np.concatenate([have, gen.chunk(len(have), max(1000, args.timed) - len(have), stream=2)]))
    if args.reuse and (work / "truth.npy").exists() and (work / "vectors32.npy").exists():
        res["data"] = {"reused": True}  # from an interrupted run: same generator, same seed
    else:
        res["data"] = make_data(n, work, gen, queries, float16_copy=first)
    res["data"]["vectors32_bytes"] = (work / "vectors32.npy").stat().st_size
    print(f"[{n:,}] data {res['data']}", flush=True)
    for kind in args.kinds.split(","):
        suffix = "" if kind == "pq" else f"_{kind}"
        saved = work / kind / "build.json"
        if args.reuse and saved.exists():  # an index an earlier run with --keep left
            res["build" + suffix] = {**json.loads(saved.read_text()), "reused": True}
        else:
            res["build" + suffix] = build(n, work, kind, shards=args.shards if kind == "pq" else 0)
            saved.write_text(json.dumps(res["build" + suffix]))
        print(f"[{n:,}] build {kind} {res['build' + suffix]}", flush=True)
        res["serve" + suffix] = serve_in_process(work, kind, n_queries=args.timed, cgroup=args.cgroup)
        print(f"[{n:,}] serve {kind} {res['serve' + suffix]}", flush=True)
        if args.no_madvise:  # the same server without madvise(MADV_RANDOM) on the float32 vectors
            res["serve" + suffix + "_no_madvise"] = serve_in_process(
                work,
                kind,
                n_queries=args.timed,
                advise=False,
                tuned=res["serve" + suffix]["tuning"],
                cgroup=args.cgroup,
            )
            print(f"[{n:,}] serve {kind} no madvise {res['serve' + suffix + '_no_madvise']}", flush=True)
        if args.pread:  # the same server reading the re-rank's rows with pread (what a server does now)
            res["serve" + suffix + "_pread"] = serve_in_process(
                work, kind, n_queries=args.timed, tuned=res["serve" + suffix]["tuning"], cgroup=args.cgroup, pread=True
            )
            print(f"[{n:,}] serve {kind} pread {res['serve' + suffix + '_pread']}", flush=True)
    if first and (work / "vectors16.npy").exists():  # what float16 costs in recall
        res["serve_float16"] = serve_in_process(work, "pq", "vectors16")
        print(f"[{n:,}] serve float16 {res['serve_float16']}", flush=True)
    if res.get("build", {}).get("shards"):
        res["serve_shards"] = serve_in_process(work, "pq", shards=res["build"]["shards"])
        print(f"[{n:,}] shards {res['serve_shards']}", flush=True)
    if not args.keep:
        shutil.rmtree(work)
    return res


def table(results: list[dict]) -> str:
    """One row per (size, codes, how rows are read: madvise, none, pread) served: build, disk, RSS (anon /
    file), effort, recall, latency."""
    head = (
        "| vectors | codes | madvise | train s | add s | .ivfdata MB | RSS open MB | RSS after 1k MB (anon / file)"
        " | nprobe | candidates | recall@10 | p50 ms | p95 ms |"
    )
    lines = [head, "|---:|---|---|" + "---:|" * 10]
    for r in results:
        for key in sorted(k for k in r if k.startswith("serve") and k != "serve_shards" and k != "serve_float16"):
            s = r[key]
            b = r.get("build" + key.removeprefix("serve").removesuffix("_no_madvise").removesuffix("_pread"), {})
            after = s["rss_after"]
            density = "" if r.get("centres", CENTRES) == CENTRES else f" ({r['centres']:,} centres)"
            lines.append(
                f"| {r['n']:,}{density}"
                f" | {s['kind']} | {'pread' if s.get('pread') else 'yes' if s.get('madvise_random') else 'no'} |"
                f" {b.get('train_s')} |"
                f" {b.get('add_s')} | {b.get('ivfdata_bytes', 0) / 1e6:,.0f} | {s['rss_opened']['VmRSS'] / 1e6:,.0f} |"
                f" {after['VmRSS'] / 1e6:,.0f} ({after['RssAnon'] / 1e6:,.0f} / {after['RssFile'] / 1e6:,.0f}) |"
                f" {s['nprobe']} | {s.get('candidates', '')} | {s['recall_at_10']} | {s['p50_ms']} | {s['p95_ms']} |"
            )
    return "\n".join(lines)


def extrapolate(results: list[dict], sizes: tuple[int, ...] = (10_000_000, 100_000_000)) -> list[dict]:
    """Build time, disk, RAM and query cost at `sizes`, scaled from the measured sizes.

    Timings on the shared machine are too noisy to fit two constants from two sizes (train took
    91 s at 1M and 78 s at 3M), so the build is scaled from the largest size by its work: k-means
    ~ sample x nlist; adding a vector ~ nlist x 2d flops (the nearest centroid) + 256 x 2d (its PQ
    code); the merge ~ n. A query ~ f + g x (nprobe x n / nlist codes scanned), f and g fitted to
    the two largest sizes, at nprobe 32 and 64 (it was 16 at 1M, 32 at 3M). RAM: the measured
    anonymous RSS less the precomputed L2 table, plus that table at the size (nlist x m x 256 floats)."""
    from indexer import ondisk

    pts = sorted((r for r in results if r.get("build", {}).get("kind") == "pq" and "serve" in r), key=lambda r: r["n"])
    if len(pts) < 2:
        return []
    lo, hi = pts[-2], pts[-1]
    hp = hi["build"]["params"]

    def add_flops(nlist: int) -> float:
        return nlist * 2.0 * DIM + 256 * 2.0 * DIM

    def scanned(r: dict) -> float:
        return r["serve"]["nprobe"] * r["n"] / r["build"]["params"]["nlist"]

    if scanned(hi) <= scanned(lo):  # the tuner chose fewer lists at the larger size (a deeper re-rank
        return []  # instead): a line through codes scanned says nothing (it gave 1.4M ms at 100M)
    g = (hi["serve"]["p50_ms"] - lo["serve"]["p50_ms"]) / (scanned(hi) - scanned(lo))
    f = hi["serve"]["p50_ms"] - g * scanned(hi)
    if g <= 0:  # the larger size answered faster (re-rank depth tuned too, noise): nothing to scale
        return []
    base_anon = hi["serve"]["rss_after"]["RssAnon"] - hp["nlist"] * hp["m"] * 256 * 4
    out = []
    for n in (size for size in sizes if size > hi["n"]):
        p = ondisk.ondisk_params(n, DIM)
        sample = min(n, max(ondisk.TRAIN_PER_LIST * p["nlist"], ondisk.PQ_TRAIN), ondisk.TRAIN_MAX)
        train = hi["build"]["train_s"] * sample * p["nlist"] / (hi["build"]["train_points"] * hp["nlist"])
        add = hi["build"]["add_s"] / hi["n"] * n * add_flops(p["nlist"]) / add_flops(hp["nlist"])
        out.append(
            {
                "n": n,
                "nlist": p["nlist"],
                "train_s": round(train),
                "add_s": round(add),
                "merge_s": round(hi["build"]["merge_s"] / hi["n"] * n),
                "ivfdata_gb": round(n * (p["m"] + 8) / 1e9, 2),
                "ids_gb": round(n * 16 / 1e9, 2),
                "float32_store_gb": round(n * DIM * 4 / 1e9, 1),
                "anon_rss_gb": round((base_anon + p["nlist"] * p["m"] * 256 * 4) / 1e9, 2),
                "p50_ms_nprobe32": round(f + g * 32 * n / p["nlist"], 1),
                "p50_ms_nprobe64": round(f + g * 64 * n / p["nlist"], 1),
                "query_fit_ms": [round(f, 3), g],
            }
        )
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        work, kind, vectors, shards, nq, advise, nprobe, rerank, pread = sys.argv[2:11]
        effort = (int(nprobe), int(rerank))
        print(json.dumps(serve(Path(work), kind, vectors, int(shards), int(nq), advise == "1", effort, pread == "1")))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--tune":
        work, kind, vectors = sys.argv[2:5]
        print(json.dumps(tune(Path(work), kind, vectors)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--shards", type=int, default=4, help="shards simulated (0: none; sizes of fewer blocks: none)")
    ap.add_argument("--compare-at", type=int, default=1_000_000, help="size at which a float16 re-rank is measured")
    ap.add_argument("--kinds", default="pq", help="codes to build and serve: pq (60 B), pq120 (120 B), sq8 (240 B)")
    ap.add_argument(
        "--centres",
        type=int,
        default=CENTRES,
        help="clusters; fewer packs the vectors as densely as more vectors would (2,000 at 1M: 10M's density)",
    )
    ap.add_argument("--timed", type=int, default=1000, help="single queries timed (and RSS measured after)")
    ap.add_argument("--cgroup", type=Path, help="a memory cgroup directory the servers run in (their RSS limit)")
    ap.add_argument("--no-madvise", action="store_true", help="serve each index again without madvise(MADV_RANDOM)")
    ap.add_argument("--pread", action="store_true", help="serve each index again, the re-rank reading rows with pread")
    ap.add_argument("--work", type=Path, default=RESULTS / "work")
    ap.add_argument("--keep", action="store_true", help="keep the big files")
    ap.add_argument("--reuse", action="store_true", help="reuse the vectors, truth and indexes an earlier run left")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    gen = Generator(n_centres=args.centres)
    queries = gen.chunk(0, args.queries, stream=1)  # fresh points from the same distribution
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for n in sizes:
        res = run_size(n, args, gen, queries, first=n == args.compare_at)
        # Sizes measured by earlier runs stay in the file (a long size can be run on its own).
        path = RESULTS / "ondisk.json"
        old = json.loads(path.read_text())["results"] if path.exists() else []
        same = (n, args.centres)
        results = sorted([r for r in old if (r["n"], r.get("centres", CENTRES)) != same] + [res], key=lambda r: r["n"])
        out = {"machine": "2-core development machine, shared with other jobs", "results": results}
        path.write_text(json.dumps(out, indent=1))
    print(table(results))
    guess = extrapolate(results)
    if guess:
        out["extrapolated"] = guess
        (RESULTS / "ondisk.json").write_text(json.dumps(out, indent=1))
        for g in guess:
            print({k: v for k, v in g.items() if k != "fit"})


if __name__ == "__main__":
    main()
