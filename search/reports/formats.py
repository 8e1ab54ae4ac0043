"""Writing a report to disk: JSON (a documented schema, streamed group by group), CSV
(one row per image) and HTML (see :mod:`.html`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from encoder.atomic import atomic_writer

from .model import FORMATS, SCHEMA, Group, Report, ReportError


def write_report(report: Report, out: str | os.PathLike, fmt: str | None = None, **kw) -> Path:
    """Write `report` as html, json or csv (default: from the file name's suffix)."""
    out = Path(out)
    fmt = (fmt or out.suffix.lstrip(".") or "html").lower()
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}: {', '.join(FORMATS)}")
    with atomic_writer(out) as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        if fmt == "json":
            write_json(report, fh)
        elif fmt == "csv":
            write_csv(report, fh)
        else:
            from .html import write_html

            write_html(report, fh, **kw)
        fh.flush()
        fh.detach()  # the atomic writer closes the file itself
    return out


def _groups_json(fh, groups: list[Group]) -> None:
    fh.write("[")
    for n, g in enumerate(groups):
        fh.write(("," if n else "") + "\n    " + json.dumps(g.as_dict()))
    fh.write("\n  ]" if groups else "]")


def write_json(report: Report, fh) -> None:
    """Stream the report as JSON, one group per line (schema "lookalike.report/1").

    Top level: schema, index, model_id, images, generated_at, and one key per section,
    null when not asked for: exact_duplicates {groups}, near_duplicates {similarity, k,
    method, vectors, pairs, seconds, tiers: [{name, threshold, description, hamming, crop_hamming,
    crowd_margin, detail_veto, groups}]},
    neighbours {k, queries: [{query, exact_match_id, error, neighbours: [hit]}]},
    outliers {count, model_id, rule, flagged, histogram {edges, counts}, failed, top}.
    A group is {tier, size, keeper: member, others: [member], min_similarity | content_hash};
    a member is {id, path, width, height, size, similarity (cosine to the keeper), hamming
    (perceptual-hash bits that differ from the keeper's; at a tier with crop_hamming, the
    smaller of that and the crop distance; or null)}. A hit (neighbour) is
    {id, path, similarity, percentile (among the index's pairs, search/pair_scale.py), width, height};
    an outlier {id, path, score, z, flagged}.
    """
    head = {
        "schema": SCHEMA,
        "index": report.index,
        "model_id": report.model_id,
        "images": report.images,
        "generated_at": report.generated_at,
    }
    fh.write(json.dumps(head)[:-1])
    fh.write(',\n "exact_duplicates": ')
    if report.exact is None:
        fh.write("null")
    else:
        fh.write('{"groups": ')
        _groups_json(fh, report.exact)
        fh.write("}")
    fh.write(',\n "near_duplicates": ')
    if report.near is None:
        fh.write("null")
    else:
        fh.write(json.dumps(report.near.header())[:-1] + ', "tiers": [')
        for n, t in enumerate(report.near.tiers):
            fh.write(("," if n else "") + "\n  " + json.dumps(asdict(t))[:-1] + ', "groups": ')
            _groups_json(fh, report.near.groups[t.name])
            fh.write("}")
        fh.write("]}")
    fh.write(',\n "neighbours": ')
    if report.neighbours is None:
        fh.write("null")
    else:
        fh.write(f'{{"k": {report.neighbours_k}, "queries": [')
        fh.write(",".join("\n  " + json.dumps(q.as_dict()) for q in report.neighbours) + "]}")
    fh.write(',\n "outliers": ')
    if report.outliers is None:
        fh.write("null")
    else:
        fh.write(json.dumps(report.outliers.header())[:-1] + ', "top": [')
        fh.write(",".join("\n  " + json.dumps(o.as_dict()) for o in report.outliers.top) + "]}")
    fh.write("\n}\n")


CSV_COLUMNS = (
    "section",
    "tier",
    "group",
    "role",
    "rank",
    "id",
    "path",
    "width",
    "height",
    "size",
    "similarity",
    "percentile",
    "score",
    "z",
    "flagged",
    "query",
)


def csv_rows(report: Report) -> Iterator[dict]:
    """One row per image: per group member, per query and neighbour, per outlier."""
    sections = [("exact", report.exact or [])]
    if report.near is not None:
        sections += [(t.name, report.near.groups[t.name]) for t in report.near.tiers]
    for tier, groups in sections:
        section = "exact" if tier == "exact" else "near"
        for g_no, g in enumerate(groups, 1):
            for rank, m in enumerate(g.members):
                role = "keeper" if rank == 0 else ("copy" if tier == "exact" else "member")
                yield {"section": section, "tier": tier, "group": g_no, "role": role, "rank": rank, **m.as_dict()}
    for q_no, q in enumerate(report.neighbours or [], 1):
        label = q.query.get("path") or q.query.get("id")
        yield {
            "section": "neighbours",
            "group": q_no,
            "role": "query",
            "rank": 0,
            "id": q.query.get("id"),
            "path": q.query.get("path"),
            "query": label,
        }
        for rank, h in enumerate(q.neighbours, 1):
            yield {
                "section": "neighbours",
                "group": q_no,
                "role": "neighbour",
                "rank": rank,
                "query": label,
                **h.as_dict(),
            }
    if report.outliers is not None:
        for rank, o in enumerate(report.outliers.top, 1):
            yield {"section": "outliers", "role": "outlier", "rank": rank, **o.as_dict()}


def write_csv(report: Report, fh) -> None:
    w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in csv_rows(report):
        w.writerow(row)
