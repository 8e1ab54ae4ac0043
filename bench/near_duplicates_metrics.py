"""Scoring near-duplicate groups against a labelled corpus (bench/near_duplicates_cross.py).

Grouped-pair precision and recall per tier (a pair is true when of one family; for the "similar"
tier, light/dark pairs count as true too), recall of (source, edit) pairs per edit, the largest
group and the largest true family inside it; and the pass/fail targets of issue 13 item 4.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dedupe_corpora import CORE_EDITS, EDITS

PRECISION_TARGET = 0.95
RECALL_TARGET = 0.90
MNIST_LARGEST = 3

Truth = dict[str, dict[str, Any]]


def _pairs(n: int) -> int:
    return n * (n - 1) // 2


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _evaluate(groups: list[list[str]], truth: Truth, key: str) -> dict[str, Any]:
    """One tier's groups (disjoint lists of paths) against `truth`; `key`: "family" or "similar"."""
    label: dict[str, int] = {}
    overlaps = 0
    for gi, g in enumerate(groups):
        for p in g:
            if p not in truth:
                raise KeyError(f"{p}: not in the truth table")
            if p in label:
                overlaps += 1
            else:
                label[p] = gi
    sizes = [sum(1 for p in g if label[p] == gi) for gi, g in enumerate(groups)]
    grouped = sum(_pairs(s) for s in sizes)
    out: dict[str, Any] = {
        "groups": sum(1 for s in sizes if s > 1),
        "grouped_images": sum(s for s in sizes if s > 1),
        "grouped_pairs": grouped,
        "overlapping_members": overlaps,
    }
    for k, suffix in (("family", "_strict"), ("similar", "_similar")):
        fam_total = Counter(v[k] for v in truth.values())
        true_pairs = sum(_pairs(c) for c in fam_total.values())
        good = 0
        for gi, g in enumerate(groups):
            good += sum(_pairs(c) for c in Counter(truth[p][k] for p in g if label[p] == gi).values())
        out["precision" + suffix] = _ratio(good, grouped)
        out["recall" + suffix] = _ratio(good, true_pairs)
        out["true_pairs" + suffix] = true_pairs
        out["false_pairs" + suffix] = grouped - good
    own = "_strict" if key == "family" else "_similar"
    out["precision"], out["recall"] = out["precision" + own], out["recall" + own]
    # the largest group, and the largest true family inside it (by `key`)
    largest, inside, worst_excess = 0, 0, 0
    for gi, g in enumerate(groups):
        members = [p for p in g if label[p] == gi]
        if len(members) < 2:
            continue
        top = max(Counter(truth[p][key] for p in members).values())
        worst_excess = max(worst_excess, len(members) - top)
        if (len(members), -top) > (largest, -inside):  # the largest; of equals, the one with most strangers
            largest, inside = len(members), top
    out["largest_group"] = largest
    out["largest_true_in_largest"] = inside
    out["largest_excess"] = largest - inside
    out["max_excess"] = worst_excess
    # (source, edit) pairs per edit; pairs of originals of one family; light/dark pairs
    hit: Counter[str] = Counter()
    n: Counter[str] = Counter()
    for p, v in truth.items():
        if v["edit"] == "original" or v["source"] not in truth:
            continue
        n[v["edit"]] += 1
        hit[v["edit"]] += int(p in label and label[p] == label.get(v["source"]))
    originals: dict[str, list[str]] = {}
    for p, v in truth.items():
        if v["edit"] == "original":
            originals.setdefault(v["similar"], []).append(p)
    for ps in originals.values():
        for a in range(len(ps)):
            for b in range(a + 1, len(ps)):
                kind = "siblings" if truth[ps[a]]["family"] == truth[ps[b]]["family"] else "light/dark"
                n[kind] += 1
                hit[kind] += int(ps[a] in label and label[ps[a]] == label.get(ps[b]))
    out["per_edit"] = {e: {"recall": hit[e] / n[e], "n": n[e]} for e in sorted(n)}
    for name, kinds in (("core", CORE_EDITS), ("all", EDITS)):
        total = sum(n[e] for e in kinds)
        out[f"recall_{name}_edits"] = _ratio(sum(hit[e] for e in kinds), total)
    return out


def evaluate_groups(
    groups_by_tier: dict[str, list[list[str]]], truth: Truth, similar_tiers: tuple[str, ...] | None = None
) -> dict[str, dict[str, Any]]:
    """Score each tier's groups (lists of paths, keys of `truth`; an image in no group is
    alone) against the truth of bench/dedupe_corpora.py.

    A pair of grouped images is true when both are of one ``family``, or, for the tiers in
    `similar_tiers` (default: those whose name contains "similar"), of one ``similar``
    family (light/dark variants). Both are reported either way: ``precision_strict`` /
    ``recall_strict`` (family) and ``precision_similar`` / ``recall_similar``;
    ``precision`` / ``recall`` are the tier's own. Also: groups, the largest group and the
    largest true family inside it (``largest_excess`` = the difference; ``max_excess`` the
    most strangers in any group), recall of (source, edit) pairs per edit (``per_edit``),
    pooled over the core edits and over every edit, and for pairs of originals of one
    family (``siblings``) and light/dark pairs (``light/dark``). Precision is None when
    nothing is grouped, recall when there is nothing to find."""
    out = {}
    for tier, groups in groups_by_tier.items():
        lenient = tier in similar_tiers if similar_tiers is not None else "similar" in tier
        out[tier] = _evaluate(groups, truth, "similar" if lenient else "family")
    return out


def targets(metrics: dict[str, Any], near_tier: str, no_duplicates: bool) -> list[dict[str, Any]]:
    """The issue's targets, each {name, value, target, pass}, for one method's tiers."""
    out = []

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        out.append({"name": name, "value": value, "target": target, "pass": ok})

    m = metrics.get(near_tier)
    if m is not None:
        if no_duplicates:
            add(
                f"{near_tier}: largest group",
                m["largest_group"],
                f"<= {MNIST_LARGEST}",
                m["largest_group"] <= MNIST_LARGEST,
            )
        else:
            p = m["precision"]
            add(f"{near_tier}: pair precision", p, f">= {PRECISION_TARGET}", p is not None and p >= PRECISION_TARGET)
            for key, label in (("recall_core_edits", "recall, core edits"), ("recall_all_edits", "recall, all edits")):
                r = m[key]
                if r is not None:
                    add(f"{near_tier}: {label}", r, f">= {RECALL_TARGET}", r >= RECALL_TARGET)
            for e in ("grey", "mirror", "mirror-file"):
                if e in m["per_edit"]:
                    r = m["per_edit"][e]["recall"]
                    add(f"{near_tier}: recall, {e} (apart)", r, f">= {RECALL_TARGET}", r >= RECALL_TARGET)
    for tier, t in metrics.items():
        add(
            f"{tier}: largest group vs true family inside + 1",
            f"{t['largest_group']} vs {t['largest_true_in_largest']}+1",
            "<=",
            t["largest_group"] <= t["largest_true_in_largest"] + 1,
        )
    return out
