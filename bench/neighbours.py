"""The precomputed neighbour table (indexer/neighbours.py): what it costs to build and to keep current.

    .venv/bin/python bench/neighbours.py [--sizes 10000,100000] [--dim 240] [--change 0.001]

For each size: autoencoder-like unit vectors (a common component plus anisotropic
noise, as bench/reports_scale.py makes them, in the default model's 240
dimensions) in a flat store; the full table computed from scratch; then one
update after a typical re-index, `--change` of the images each added, changed
in place and removed, timed against a full recompute of the same vectors, which
it must equal (checked: ids and similarities). Memory: the table's bytes per image.

Prints a table, writes JSON to bench/results/neighbours.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import RESULTS, command_line, describe_machine, machine, table, write_json

from indexer.layout import NEIGHBOURS_K
from indexer.neighbours import update_neighbours
from indexer.vectors import VectorStore


def vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    common = np.random.default_rng(0).standard_normal(dim).astype(np.float32) * 3
    scales = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    x = common + rng.standard_normal((n, dim)).astype(np.float32) * scales
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench(n: int, dim: int, change: float) -> dict:
    rng = np.random.default_rng(n)
    store = VectorStore(dim)
    store.add(np.arange(1, n + 1), vectors(n, dim, rng))
    ids, vecs = store.all_vectors()
    full, s_full = update_neighbours(ids, vecs, store.index, None)

    m = max(1, int(n * change))
    gone = rng.choice(ids, m, replace=False)
    store.remove(gone)
    left = store.ids()
    moved = rng.choice(left, m, replace=False)  # changed in place: same id, new vector
    store.remove(moved)
    store.add(moved, vectors(m, dim, rng))
    store.add(np.arange(n + 1, n + m + 1), vectors(m, dim, rng))
    ids2, vecs2 = store.all_vectors()
    inc, s_inc = update_neighbours(ids2, vecs2, store.index, full)
    again, s_again = update_neighbours(ids2, vecs2, store.index, None)
    same_ids = float(np.mean(inc["nbr"] == again["nbr"]))
    max_sim_diff = float(np.max(np.abs(inc["sim"] - again["sim"])))
    return {
        "n": n,
        "dim": dim,
        "k": NEIGHBOURS_K,
        "full_s": round(s_full.seconds, 2),
        "changed_each": m,
        "update_s": round(s_inc.seconds, 2),
        "update_searched": s_inc.searched,
        "update_merged": s_inc.merged,
        "recompute_s": round(s_again.seconds, 2),
        "update_vs_recompute": round(s_inc.seconds / s_again.seconds, 3),
        "same_neighbour_ids": round(same_ids, 5),
        "max_similarity_diff": max_sim_diff,
        "table_bytes_per_image": full.dtype.itemsize,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=240)
    ap.add_argument("--change", type=float, default=0.001, help="Fraction added, changed and removed, each.")
    ap.add_argument("--out", type=Path, default=RESULTS / "neighbours.json")
    args = ap.parse_args()
    info = machine()
    print(describe_machine(info))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = bench(n, args.dim, args.change)
        rows.append(r)
        print(r, flush=True)
    header = list(rows[0])
    print()
    print(table([[r[h] for h in header] for r in rows], header))
    path = write_json(args.out, {"command": command_line(), "machine": info, "results": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
