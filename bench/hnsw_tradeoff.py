"""HNSW recall against search time, by efSearch (issue 4): what a cheaper by-id search would cost in recall.

    .venv/bin/python bench/hnsw_tradeoff.py INDEX_DIR [INDEX_DIR ...] [--queries 300] [--ef 16,32,48,64,96,128]

Each INDEX_DIR is an index whose manifest names an HNSW search file (for example the
1M indexes that bench/search_latency.py and bench/reports_scale.py cache). Queries are
stored vectors of random indexed images, searched as `GET /images/{id}/similar` does
(itself excluded); the truth is the exact top-10 from the flat store. One thread, as
in the server. Prints a table and writes JSON to bench/results/hnsw_tradeoff.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, command_line, describe_machine, machine, table, write_json

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

K = 10


def measure(index_dir: Path, n_queries: int, efs: list[int], seed: int) -> dict[str, Any]:
    import faiss

    from indexer.exact import open_exact_vectors
    from indexer.manifest import Manifest
    from indexer.vectors import apply_search_params, read_search_index

    faiss.omp_set_num_threads(1)
    manifest = Manifest.read(index_dir)
    if manifest is None or manifest.index_type != "hnsw":
        raise SystemExit(f"{index_dir}: not an HNSW index")
    files = manifest.files(index_dir)
    hnsw = read_search_index(files / manifest.search_file, manifest.params)
    store = open_exact_vectors(files, manifest, hnsw)  # vectors.faiss, or (published since) the segments
    ids = store.ids()
    rng = np.random.default_rng(seed)
    qids = rng.choice(ids, size=n_queries, replace=False)
    q = store.get(qids)
    t0 = time.perf_counter()
    _, exact = store.search_among(q, K + 1, ids)
    exact_ms = (time.perf_counter() - t0) / n_queries * 1e3
    truth = [set(row[row != qi][:K].tolist()) for row, qi in zip(exact, qids, strict=True)]
    rows = []
    for ef in efs:
        apply_search_params(hnsw, {"efSearch": ef})
        found = np.empty((n_queries, K + 1), dtype=np.int64)
        t0 = time.perf_counter()
        for j in range(n_queries):  # one at a time, as requests arrive
            found[j] = hnsw.search(q[j : j + 1], K + 1)[1][0]
        ms = (time.perf_counter() - t0) / n_queries * 1e3
        recall = np.mean(
            [len(t & set(row[row != qi][:K].tolist())) / K for t, row, qi in zip(truth, found, qids, strict=True)]
        )
        rows.append({"efSearch": ef, "recall_at_10": round(float(recall), 4), "ms_per_query": round(ms, 3)})
    return {
        "index": str(index_dir),
        "vectors": len(store),
        "dim": store.dim,
        "params": manifest.params,
        "queries": n_queries,
        "exact_ms_per_query_batched": round(exact_ms, 3),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index", type=Path, nargs="+")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--ef", default="16,24,32,48,64,96,128")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "hnsw_tradeoff.json")
    args = ap.parse_args()
    efs = [int(x) for x in args.ef.split(",")]
    info = machine()
    results = [measure(d.resolve(), args.queries, efs, args.seed) for d in args.index]
    print(f"machine: {describe_machine(info)}")
    for r in results:
        print(f"\n{r['index']}: {r['vectors']:,} x {r['dim']}, {r['params']}, {r['queries']} queries")
        print(
            table(
                [[x["efSearch"], x["recall_at_10"], x["ms_per_query"]] for x in r["rows"]],
                ["efSearch", "recall@10", "ms/query"],
            )
        )
    write_json(args.out, {"command": command_line(), "machine": info, "results": results})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
