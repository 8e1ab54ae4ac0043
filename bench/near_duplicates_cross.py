"""Near-duplicates across corpora (issue 13 item 3): the report with ONE set of defaults
on several labelled corpora, side by side with imagehash's pHash alone.

    .venv/bin/python bench/near_duplicates_cross.py [--corpora a,b] [--seeds 0,1] [--model DIR]
                                                    [--originals 150] [--quick] [--workdir DIR]

Corpora (bench/dedupe_corpora.py; built once per seed in --workdir, cached): Tux Paint
stamps with generated edits and distractors (``tuxpaint-edits``), the wallpapers, whose
crops/resolutions of one picture are duplicates but whose light/dark variants are only
similar, with edits (``wallpapers-edits``), a photo folder with many duplicates
(``many-duplicates``: 12 pictures with 9 edited copies each and 40 drawings) and
MNIST digits, where nothing is a duplicate (``mnist``).

The product path, per corpus: ``build_index(folder)`` (no model: the default model is
trained on the folder, minutes on 2 cores, cached with the index inside the folder;
``--model DIR`` reuses one model for every corpus instead), ``Engine(index)``,
``near_duplicates(engine)`` with its defaults. Only the report's result is used: each
tier's groups as the user sees them (a tier's own groups, plus the stricter tiers'
groups it does not supersede), with byte-identical copies (the report's exact section)
joined to their copy's group.

Baseline: pHash (imagehash, 64 bits, of the image composited on white) of every image,
all pairs at Hamming distance <= 4, 8 and 10, grouped by connected components (``cc``)
and by keeper-centred stars (``star``: the best remaining image by resolution, then
file size, takes every remaining image within the distance).

Metrics per tier (:func:`evaluate_groups`): grouped-pair precision and recall (a pair
is true when of one family; for the "similar" tier, light/dark pairs count as true too),
recall of (source, edit) pairs per edit, the largest group and the largest true family
inside it, the number of groups; per report tier also each member's similarity to its
keeper against the tier's threshold. Targets (pass/fail): near-duplicate tier precision
>= 0.95 and recall >= 0.90 over the core edits (resize, JPEG, crop, brightness; greyscale
and mirror reported apart), on MNIST no near-duplicate group larger than 3, and in every
tier the largest group no larger than the largest true family it contains + 1.

Prints a table per corpus, writes JSON to bench/results/near_duplicates_cross.json.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import RESULTS, command_line, describe_machine, machine, table, write_json
from dedupe_corpora import CORE_EDITS, CORPORA, EDITS, build_all
from near_duplicates_metrics import Truth, evaluate_groups, targets
from phash_baseline import PHASH_DISTANCES, phash_groups, phashes

REPO = Path(__file__).resolve().parent.parent
NEAR_TIER = "near-duplicate"
PER_EDIT_COLUMNS = (*EDITS, "mirror-file", "siblings", "light/dark")


# ---------------------------------------------------------------- the report's groups


def _rel(path: str, folder: Path) -> str:
    p = Path(path)
    return (p.resolve().relative_to(folder.resolve()) if p.is_absolute() else p).as_posix()


def report_groups(near: Any, folder: Path, truth: Truth) -> tuple[dict[str, list[list[str]]], dict[str, Any]]:
    """(each tier's groups as the user sees them, as lists of paths; keeper checks per tier).

    A tier's view: its own groups, then each stricter tier's groups whose images it does
    not already show (the report lists a group at the strictest tier at which it holds
    together; a looser tier repeats it only when it grows). Byte-identical copies (the
    exact-duplicate section's business, left out of the near-duplicate tiers) join their
    copy's group, or form one of their own."""
    by_hash: dict[str, list[str]] = {}
    for p, v in truth.items():
        by_hash.setdefault(v["sha1"], []).append(p)
    twins = {p: ps for ps in by_hash.values() if len(ps) > 1 for p in ps}
    names = [t.name for t in near.tiers]
    views: dict[str, list[list[str]]] = {}
    checks: dict[str, Any] = {}
    for ti, tier in enumerate(near.tiers):
        view: list[list[str]] = []
        seen: set[str] = set()
        for name in names[ti::-1]:  # this tier, then the stricter ones
            for g in near.groups.get(name, []):
                paths = [_rel(m.path, folder) for m in g.members]
                rest = [p for p in paths if p not in seen]
                if len(rest) >= 2:
                    view.append(rest)
                    seen.update(rest)
        for g in view:  # byte-identical copies join their copy's group
            for p in list(g):
                for q in twins.get(p, ()):
                    if q not in seen:
                        g.append(q)
                        seen.add(q)
        for ps in by_hash.values():
            rest = [p for p in ps if p not in seen]
            if len(rest) >= 2:
                view.append(rest)
                seen.update(rest)
        views[tier.name] = view
        # each shown member's similarity to its keeper against the tier's rule
        sims, below, unjustified, members = [], 0, 0, 0
        for g in near.groups.get(tier.name, []):
            for m in g.others:
                members += 1
                s = m.similarity
                if s is None:
                    continue
                sims.append(s)
                if s < tier.threshold:
                    below += 1
                    if tier.hamming is None or m.hamming is None or m.hamming > tier.hamming:
                        unjustified += 1
        checks[tier.name] = {
            "threshold": tier.threshold,
            "hamming": tier.hamming,
            "shown_groups": len(near.groups.get(tier.name, [])),
            "members": members,
            "min_similarity_to_keeper": round(min(sims), 4) if sims else None,
            "below_threshold": below,
            "below_threshold_and_hash": unjustified,
        }
    return views, checks


# ---------------------------------------------------------------- one corpus


#: A refitted model is reused only if the fitting code is the same (its hash is in the name).
FIT_CODE = hashlib.sha1(
    b"".join((REPO / "encoder" / f).read_bytes() for f in ("vlad.py", "search_vector.py", "calibration.py"))
).hexdigest()


def pooled_model(index_dir: Path, folder: Path, pooling: str) -> Path:
    """A copy of the index's model with its pooling refitted on `folder`'s images (same weights)."""
    import shutil

    from encoder import Encoder
    from encoder.decoding import decode_to_array
    from encoder.image_files import find_images
    from encoder.search_vector import refit_search_vector
    from indexer.layout import MODEL_DIR

    src = index_dir / MODEL_DIR
    weights = hashlib.sha1((src / "model.safetensors").read_bytes()).hexdigest()
    tag = hashlib.sha1(f"{folder.resolve()} {weights} {FIT_CODE}".encode()).hexdigest()[:8]
    dst = folder.parent / f"model-{pooling}-{tag}"
    if (dst / "config.json").exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(
        src, dst, ignore=shutil.ignore_patterns("resume*", "*.png", "vlad.safetensors", "calibration.safetensors")
    )
    paths = [p for p in find_images(folder) if ".lookalike" not in p.parts]
    pixels, _, _ = decode_to_array(paths, Encoder(dst, device="cpu").image_size)
    refit_search_vector(dst, pixels, pooling=pooling, device="cpu")
    return dst


def run_corpus(
    name: str,
    folder: Path,
    truth: Truth,
    model: Path | None,
    linkage: str | None = None,
    pooling: str | None = None,
) -> dict[str, Any]:
    from indexer import build_index
    from search.engine import Engine
    from search.reports import near_duplicates

    base = folder.parent
    result: dict[str, Any] = {
        "corpus": name,
        "folder": str(folder),
        "images": len(truth),
        "families": len({v["family"] for v in truth.values()}),
        "edits": dict(Counter(v["edit"] for v in truth.values())),
    }
    t0 = time.perf_counter()
    if model is None:  # the product path: the default model, trained on this folder
        summary = build_index(folder, progress=False)
    else:
        tag = hashlib.sha1(str(model.resolve()).encode()).hexdigest()[:8]
        summary = build_index(folder, base / f"index-{model.name}-{tag}", model, progress=False)
    if pooling:  # the same weights, the pooling refitted: a second index beside the first
        model = pooled_model(Path(summary.index_dir), folder, pooling)
        summary = build_index(folder, base / f"index-{model.name}", model, progress=False)
    result["index"] = {
        "dir": summary.index_dir,
        "seconds": round(time.perf_counter() - t0, 1),
        "trained": summary.trained,
        "train_s": round(summary.train_s, 1),
        "total": summary.total,
        "embedded": summary.embedded,
        "exact_duplicates": summary.duplicates,
        "failed": [list(f) for f in summary.failed],
    }
    how = f"training {summary.train_s:.0f} s" if summary.trained else "cached or given model"
    print(f"  indexed {summary.total} images in {result['index']['seconds']} s ({how})", flush=True)
    engine = Engine(summary.index_dir, device="cpu")
    try:
        result["model_id"] = engine.snapshot().manifest.model_id
    except Exception:  # noqa: BLE001 - only a label
        result["model_id"] = None
    t1 = time.perf_counter()
    near = near_duplicates(engine, **({"linkage": linkage} if linkage else {}))
    result["report_seconds"] = round(time.perf_counter() - t1, 1)
    result["report_header"] = near.header()
    result["tiers"] = [
        {"name": t.name, "threshold": t.threshold, "hamming": t.hamming, "crop_hamming": t.crop_hamming}
        for t in near.tiers
    ]
    views, checks = report_groups(near, folder, truth)
    close = getattr(engine, "close", None)
    if close:
        close()
    result["report"] = evaluate_groups(views, truth)
    for tier, c in checks.items():
        result["report"][tier]["keeper"] = c
    t1 = time.perf_counter()
    info = phashes(base, folder, sorted(truth))
    result["phash_seconds"] = round(time.perf_counter() - t1, 1)
    result["phash"] = evaluate_groups(phash_groups(info), truth, similar_tiers=())
    no_dups = result["report"][next(iter(result["report"]))]["true_pairs_strict"] == 0
    near_tier = NEAR_TIER if NEAR_TIER in result["report"] else list(result["report"])[len(result["report"]) // 2]
    result["targets"] = {"report": targets(result["report"], near_tier, no_dups)}
    for d in PHASH_DISTANCES:
        for how in ("cc", "star"):
            key = f"pHash {how} <={d}"
            result["targets"][key] = targets({key: result["phash"][key]}, key, no_dups)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


# ---------------------------------------------------------------- output


def _f(x: Any) -> Any:
    return "-" if x is None else round(x, 3) if isinstance(x, float) else x


def print_corpus(r: dict[str, Any]) -> None:
    print(
        f"\n== {r['corpus']}: {r['images']} images, {r['families']} families; model {r.get('model_id')}; "
        f"index {r['index']['seconds']} s, report {r['report_seconds']} s"
    )
    print(
        "   tiers: "
        + "; ".join(
            f"{t['name']} cos>={t['threshold']}"
            + (f"|ham<={t['hamming']}" if t["hamming"] is not None else "")
            + (f"|crop<={t['crop_hamming']}" if t.get("crop_hamming") is not None else "")
            for t in r["tiers"]
        )
    )
    head = [
        "method",
        "groups",
        "largest",
        "true in it",
        "max strangers",
        "precision",
        "recall",
        "P strict",
        "R strict",
        "R core",
        "R grey",
        "R mirror",
        "min sim",
        "below cos",
        "below cos+hash",
    ]
    rows = []
    methods = [(f"report {k}", m) for k, m in r["report"].items()] + list(r["phash"].items())
    for label, m in methods:
        pe = m["per_edit"]
        k = m.get("keeper") or {}
        rows.append(
            [
                label,
                m["groups"],
                m["largest_group"],
                m["largest_true_in_largest"],
                m["max_excess"],
                _f(m["precision"]),
                _f(m["recall"]),
                _f(m["precision_strict"]),
                _f(m["recall_strict"]),
                _f(m["recall_core_edits"]),
                _f(pe.get("grey", {}).get("recall")),
                _f(pe.get("mirror", {}).get("recall")),
                _f(k.get("min_similarity_to_keeper")),
                k.get("below_threshold"),
                k.get("below_threshold_and_hash"),
            ]
        )
    print(table(rows, head))
    cols = [c for c in PER_EDIT_COLUMNS if any(c in m["per_edit"] for _, m in methods)]
    if cols:
        first = methods[0][1]["per_edit"]
        counts = ", ".join(f"{c} {first[c]['n']}" for c in cols if c in first)
        print(f"   recall of (source, edit) pairs per edit (n: {counts})")
        rows = [[label, *(_f(m["per_edit"].get(c, {}).get("recall")) for c in cols)] for label, m in methods]
        print(table(rows, ["method", *cols]))
    print("   targets:")
    for who, ts in r["targets"].items():
        if who != "report" and "<=8" not in who:  # pHash: the middle distance only, on screen
            continue
        for t in ts:
            mark = "PASS" if t["pass"] else "FAIL"
            v, name = _f(t["value"]), t["name"].removeprefix(who + ": ")
            print(f"   {mark}  {who}: {name} = {v} (target {t['target']})")


def summary_rows(runs: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for seed, corpora in runs.items():
        for name, r in corpora.items():
            near = r["report"].get(NEAR_TIER) or list(r["report"].values())[len(r["report"]) // 2]
            ph = r["phash"]["pHash star <=8"]
            failed = sum(1 for t in r["targets"]["report"] if not t["pass"])
            rows.append(
                [
                    name,
                    seed,
                    near["groups"],
                    near["largest_group"],
                    _f(near["precision"]),
                    _f(near["recall_core_edits"]),
                    _f(near["per_edit"].get("grey", {}).get("recall")),
                    _f(near["per_edit"].get("mirror", {}).get("recall")),
                    ph["groups"],
                    ph["largest_group"],
                    _f(ph["precision"]),
                    _f(ph["recall_core_edits"]),
                    f"{len(r['targets']['report']) - failed}/{len(r['targets']['report'])}",
                ]
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma list of: {', '.join(CORPORA)}")
    ap.add_argument("--seed", type=int, default=None, help="one seed (as --seeds N)")
    ap.add_argument("--seeds", default="0", help="comma list of seeds: corpora (and models) per seed")
    ap.add_argument("--workdir", type=Path, default=RESULTS / "near_duplicates_cross", help="corpora and indexes")
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="one model for every corpus [default: the product path, a model trained per folder]",
    )
    ap.add_argument("--originals", type=int, default=150, help="tuxpaint-edits: stamps that get edits")
    ap.add_argument("--distractors", type=int, default=250, help="tuxpaint-edits: other stamps")
    ap.add_argument("--mnist", type=int, default=2000, help="mnist: digits")
    ap.add_argument(
        "--linkage", choices=("cores", "star", "complete"), default=None, help="how groups form [default: the report's]"
    )
    ap.add_argument(
        "--pooling",
        choices=("mean", "vlad"),
        default=None,
        help="refit each corpus's model with this pooling (same weights) and report on that index "
        "[default: the model's own]",
    )
    ap.add_argument("--quick", action="store_true", help="a small run: 30 originals, 60 distractors, 300 digits")
    ap.add_argument("--out", type=Path, default=RESULTS / "near_duplicates_cross.json", help="JSON results")
    args = ap.parse_args(argv)
    if args.quick:
        args.originals, args.distractors, args.mnist = 30, 60, 300
    args.seeds = [args.seed] if args.seed is not None else [int(s) for s in args.seeds.split(",") if s.strip()]
    args.corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    unknown = set(args.corpora) - set(CORPORA)
    if unknown:
        ap.error(f"unknown corpora {sorted(unknown)}: choose from {', '.join(CORPORA)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": command_line(),
        "linkage": args.linkage,
        "pooling": args.pooling,
        "machine": machine(),
        "model": str(args.model or "default model trained per corpus (product path)"),
        "seeds": args.seeds,
        "corpora": args.corpora,
        "originals": args.originals,
        "distractors": args.distractors,
        "mnist": args.mnist,
        "edits": EDITS,
        "core_edits": CORE_EDITS,
        "phash_distances": PHASH_DISTANCES,
        "runs": {},
    }
    print(describe_machine(results["machine"]), flush=True)
    for seed in args.seeds:
        t1 = time.perf_counter()
        built = build_all(
            args.workdir, seed, args.corpora, originals=args.originals, distractors=args.distractors, mnist=args.mnist
        )
        print(f"seed {seed}: corpora ready in {time.perf_counter() - t1:.1f} s", flush=True)
        runs = results["runs"].setdefault(str(seed), {})
        for name, (folder, truth) in built.items():
            print(f"{name} (seed {seed}): {len(truth)} images", flush=True)
            runs[name] = run_corpus(name, folder, truth, args.model, args.linkage, args.pooling)
            print_corpus(runs[name])
            results["seconds"] = round(time.perf_counter() - t0, 1)
            write_json(args.out, results)  # after each corpus: a long run keeps what it measured
    results["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, results)
    print(
        f"\nsummary (report: the {NEAR_TIER} tier; pHash: keeper-centred stars at Hamming <= 8), "
        f"{results['seconds']} s in all"
    )
    print(
        table(
            summary_rows(results["runs"]),
            [
                "corpus",
                "seed",
                "groups",
                "largest",
                "precision",
                "R core",
                "R grey",
                "R mirror",
                "pHash groups",
                "pHash largest",
                "pHash P",
                "pHash R core",
                "targets met",
            ],
        )
    )
    print(f"JSON: {args.out}")
    return results


if __name__ == "__main__":
    main()
