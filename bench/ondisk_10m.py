"""The on-disk search index (indexer/ondisk.py) at 1M, 3M and 10M synthetic 240-d vectors.

For each size: generate autoencoder-like vectors in chunks (clusters of uneven spread on an
anisotropic cloud, with planted near-duplicates; never more than one chunk in RAM), write them
as the memory-mapped float32 ``.npy`` that re-ranks read (as the store's float32), compute the exact top-10 of fresh
queries by brute force while generating, train IVF-PQ on a sample, encode chunk by chunk into
block files, merge them into one ``.ivfdata``, then, in a separate "server" process: open it
(RSS), pick nprobe on the ladder to recall@10 >= 0.95 after re-rank, and time 1,000 single
queries (p50/p95, RSS after). At --compare-at it also measures a float16 re-rank (half the
bytes; it capped recall@10 at 0.93 here) and IVF-SQ8 (240-byte codes) beside IVF-PQ; at the largest, 4 shards of
a quarter each, searched one after the other and merged, against the one index.

    nice -n 5 .venv/bin/python bench/ondisk_10m.py --sizes 1000000,3000000,10000000

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


class Generator:
    """Autoencoder-like unit vectors: a common direction and a decaying spectrum (as
    bench/reports_scale.py), clustered around 20k centres of uneven spread, 2% near-copies."""

    def __init__(self, seed: int = 0, n_centres: int = 20_000) -> None:
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
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    sample = ondisk.training_sample(chunks32(work, n), n, params["nlist"])
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    if kind == "pq":
        trained = ondisk.train(sample, params)
    else:  # IVF-SQ8 beside it: 1 byte a dimension
        quantizer = faiss.IndexFlatL2(DIM)  # unit vectors: L2 ranks as inner product (see ondisk.train)
        trained = faiss.IndexIVFScalarQuantizer(quantizer, DIM, params["nlist"], faiss.ScalarQuantizer.QT_8bit)
        trained.own_fields = True
        quantizer.this.disown()
        trained.cp.max_points_per_centroid = ondisk.TRAIN_PER_LIST
        trained.train(sample)
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


def rss() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def serve(work: Path, kind: str, vectors: str, shards: int, n_queries: int) -> dict:
    """What a server process does: open (mmap), tune nprobe on the ladder, answer single queries."""
    import faiss

    from indexer import ondisk
    from indexer.vectors import NPROBE_LADDER, RECALL_TARGET

    faiss.omp_set_num_threads(1)  # as the engine: one thread a query
    before = rss()
    t0 = time.perf_counter()
    paths = [work / kind / f"shard{s}" / "search.faiss" for s in range(shards)] or [work / kind / "search.faiss"]
    indexes = [ondisk.read(p) for p in paths]
    exact = np.load(work / f"{vectors}.npy", mmap_mode="r")
    open_s = time.perf_counter() - t0
    opened = rss()
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")

    def get(ids: np.ndarray) -> np.ndarray:
        return np.asarray(exact[np.sort(ids) - 1], np.float32)[np.argsort(np.argsort(ids))]

    rerank = ondisk.RERANK if kind == "pq" else 1

    def query(q: np.ndarray) -> np.ndarray:
        if len(indexes) == 1:
            return ondisk.search(indexes[0], q, K, get, rerank)[1]
        # Shards: each returns its candidates, the union is re-ranked (as a coordinator would).
        depth = max(ondisk.CANDIDATES_MIN, K * rerank)
        cand = np.concatenate([ix.search(q, depth)[1] for ix in indexes], axis=1)
        cand = cand[cand >= 0]
        s = get(cand) @ q[0]
        return cand[np.argsort(-s)[:K]][None]

    def recall(rows: range) -> float:
        hits = [len(set(query(queries[i : i + 1])[0].tolist()) & set(truth[i].tolist())) for i in rows]
        return float(np.mean(hits)) / K

    nlist = faiss.extract_index_ivf(indexes[0]).nlist
    ladder = [p for p in NPROBE_LADDER if p <= nlist]
    tune = range(min(200, len(queries)))
    curve = []
    chosen = ladder[-1]
    for p in ladder:
        for ix in indexes:
            faiss.extract_index_ivf(ix).nprobe = p
        r = recall(tune)
        curve.append((p, round(r, 4)))
        if r >= RECALL_TARGET:
            chosen = p
            break
    for ix in indexes:
        faiss.extract_index_ivf(ix).nprobe = chosen
    lat = []
    order = np.arange(n_queries) % len(queries)
    for i in order:
        t = time.perf_counter()
        query(queries[i : i + 1])
        lat.append((time.perf_counter() - t) * 1000)
    lat = np.array(lat)
    return {
        "kind": kind,
        "vectors": vectors,
        "shards": shards,
        "open_s": round(open_s, 3),
        "rss_before": before,
        "rss_opened": opened,
        "rss_after": rss(),
        "nprobe_curve": curve,
        "nprobe": chosen,
        "recall_at_10": round(recall(range(len(queries))), 4),
        "queries_timed": int(n_queries),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "mean_ms": round(float(lat.mean()), 2),
    }


def serve_in_process(work: Path, kind: str, vectors: str = "vectors32", shards: int = 0, n_queries: int = 1000):
    cmd = [sys.executable, __file__, "--serve", str(work), kind, vectors, str(shards), str(n_queries)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def run_size(n: int, args: argparse.Namespace, gen: Generator, queries: np.ndarray, first: bool) -> dict:
    work = args.work / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"n": n, "dim": DIM}
    if args.reuse and (work / "truth.npy").exists() and (work / "vectors32.npy").exists():
        res["data"] = {"reused": True}  # from an interrupted run: same generator, same seed
    else:
        res["data"] = make_data(n, work, gen, queries, float16_copy=first)
    res["data"]["vectors32_bytes"] = (work / "vectors32.npy").stat().st_size
    print(f"[{n:,}] data {res['data']}", flush=True)
    res["build"] = build(n, work, "pq", shards=args.shards)
    print(f"[{n:,}] build {res['build']}", flush=True)
    res["serve"] = serve_in_process(work, "pq")
    print(f"[{n:,}] serve {res['serve']}", flush=True)
    if first:  # what float16 costs in recall, and IVF-SQ8 beside IVF-PQ
        res["serve_float16"] = serve_in_process(work, "pq", "vectors16")
        print(f"[{n:,}] serve float16 {res['serve_float16']}", flush=True)
        res["build_sq8"] = build(n, work, "sq8")
        res["serve_sq8"] = serve_in_process(work, "sq8")
        print(f"[{n:,}] sq8 {res['build_sq8']} {res['serve_sq8']}", flush=True)
    if res["build"]["shards"]:
        res["serve_shards"] = serve_in_process(work, "pq", shards=res["build"]["shards"])
        print(f"[{n:,}] shards {res['serve_shards']}", flush=True)
    if not args.keep:
        shutil.rmtree(work)
    return res


def table(results: list[dict]) -> str:
    head = (
        "| vectors | train s | add s | merge s | .ivfdata MB | float32 vectors MB | RSS open MB"
        " | RSS after 1k MB | nprobe | recall@10 | p50 ms | p95 ms |"
    )
    lines = [head, "|" + "---:|" * 12]
    for r in results:
        b, s = r["build"], r["serve"]
        lines.append(
            f"| {r['n']:,} | {b['train_s']} | {b['add_s']} | {b['merge_s']} | {b['ivfdata_bytes'] / 1e6:,.0f} | "
            f"{r['data']['vectors32_bytes'] / 1e6:,.0f} | {s['rss_opened']['VmRSS'] / 1e6:,.0f} | "
            f"{s['rss_after']['VmRSS'] / 1e6:,.0f} | {s['nprobe']} | {s['recall_at_10']} | "
            f"{s['p50_ms']} | {s['p95_ms']} |"
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

    g = (hi["serve"]["p50_ms"] - lo["serve"]["p50_ms"]) / max(1.0, scanned(hi) - scanned(lo))
    f = hi["serve"]["p50_ms"] - g * scanned(hi)
    base_anon = hi["serve"]["rss_after"]["RssAnon"] - hp["nlist"] * hp["m"] * 256 * 4
    out = []
    for n in sizes:
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
        work, kind, vectors, shards, nq = sys.argv[2:7]
        print(json.dumps(serve(Path(work), kind, vectors, int(shards), int(nq))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--shards", type=int, default=4, help="shards simulated (0: none; sizes of fewer blocks: none)")
    ap.add_argument("--compare-at", type=int, default=1_000_000, help="size at which float32 and IVF-SQ8 are measured")
    ap.add_argument("--work", type=Path, default=RESULTS / "work")
    ap.add_argument("--keep", action="store_true", help="keep the big files")
    ap.add_argument("--reuse", action="store_true", help="reuse the vectors and truth an interrupted run left")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    gen = Generator()
    queries = gen.chunk(0, args.queries, stream=1)  # fresh points from the same distribution
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for n in sizes:
        res = run_size(n, args, gen, queries, first=n == args.compare_at)
        # Sizes measured by earlier runs stay in the file (a long size can be run on its own).
        path = RESULTS / "ondisk.json"
        old = json.loads(path.read_text())["results"] if path.exists() else []
        results = sorted([r for r in old if r["n"] != n] + [res], key=lambda r: r["n"])
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
