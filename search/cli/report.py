"""`lookalike report`: duplicates, near-duplicates, neighbours of a set and outliers of an index."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import index_for, user_errors


def _queries(value: str | None) -> str | list[int] | None:
    """A folder, or comma-separated ids of indexed images."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if all(p.isdigit() for p in parts if p) and not Path(value).is_dir():
        return [int(p) for p in parts if p]
    if not Path(value).is_dir():
        raise NotADirectoryError(f"--queries {value}: not a folder (nor a list of ids like 3,17,42)")
    return value


@user_errors
def report(
    out: Path = typer.Option(..., "--out", "-o", help="File to write (.html, .json or .csv)."),
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    duplicates: bool = typer.Option(False, "--duplicates", help="Exact duplicates (same bytes)."),
    near: str | None = typer.Option(
        None,
        "--near",
        help="Near-duplicates down to this cosine similarity, or tier name (near-identical, near-duplicate, "
        "similar), or 'all' for every tier [default: none, or 'all' with no section option].",
    ),
    k: int = typer.Option(16, "-k", min=2, help="Neighbours per image when looking for near-duplicates."),
    phash: bool = typer.Option(
        True,
        "--phash/--no-phash",
        help="Near-duplicates: also join neighbours with close perceptual hashes (decodes every image once, cached).",
    ),
    queries: str | None = typer.Option(
        None,
        "--queries",
        help="A folder of images (or ids like 3,17,42): report each one's top neighbours [default: none].",
    ),
    neighbours: int = typer.Option(10, "--neighbours", min=1, help="Neighbours per query image."),
    outliers: int | None = typer.Option(
        None,
        "--outliers",
        min=0,
        help="The N images the autoencoder reconstructs worst (decodes every image) [default: none].",
    ),
    fmt: str | None = typer.Option(None, "--format", help="html, json or csv [default: from --out's suffix]."),
    max_groups: int = typer.Option(200, help="HTML only: at most this many groups per section."),
    workers: int | None = typer.Option(None, help="Parallel decoders for --outliers/--queries [default: cores]."),
    reviewed: bool = typer.Option(
        False, "--reviewed", help="Also list groups already resolved or dismissed (`lookalike dedupe`)."
    ),
) -> None:
    """Write a report on an index. With no section options: exact duplicates and every near-duplicate tier."""
    from search.engine import Engine
    from search.reports import build_report, resolve_tiers, write_report
    from search.review import hide_decided_in_report

    if not (duplicates or near or queries or outliers is not None):
        duplicates, near = True, "all"
    engine = Engine(index_for(index_dir))
    try:
        rep = build_report(
            engine,
            duplicates=duplicates,
            near=resolve_tiers(near) if near else None,
            k=k,
            queries=_queries(queries),
            neighbours_k=neighbours,
            outliers_top=outliers,
            workers=workers,
            phash=phash,
        )
        if not reviewed:
            hide_decided_in_report(engine, rep)
        fmt = (fmt or out.suffix.lstrip(".") or "html").lower()
        extra = {"engine": engine, "max_groups": max_groups} if fmt == "html" else {}
        path = write_report(rep, out, fmt, **extra)
    finally:
        engine.close()
    lines = []
    if rep.exact is not None:
        lines.append(f"exact duplicates: {len(rep.exact)} groups, {sum(len(g.others) for g in rep.exact)} copies")
    if rep.near is not None:
        for t in rep.near.tiers:
            lines.append(f"{t.name} (>= {t.threshold:g}): {len(rep.near.groups[t.name])} groups")
        lines.append(f"  ({rep.near.vectors} images, {rep.near.pairs} pairs, {rep.near.seconds:.1f} s)")
    if rep.neighbours is not None:
        lines.append(f"neighbours: {len(rep.neighbours)} queries")
    if rep.outliers is not None:
        lines.append(f"outliers: {rep.outliers.flagged} of {rep.outliers.count} above z {rep.outliers.threshold_z}")
    for line in lines:
        typer.echo(line)
    typer.echo(f"report: {path}")
