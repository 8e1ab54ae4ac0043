"""`lookalike dedupe` and `lookalike restore`: resolve duplicate groups, and undo it.

Both are dry runs unless given --apply: they say what would move, and move nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .common import UsageError, index_for, user_errors

TIER_CHOICES = ("exact", "near-identical", "near-duplicate", "similar")


def _ids(value: str) -> list[int]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(f"--members {value!r}: give ids of indexed images like 3,17,42")
    return [int(p) for p in parts]


def _groups(engine: Any, tier: str, k: int, phash: bool) -> list:
    """Exact duplicates, then the near-duplicate tiers down to `tier`, less what was decided."""
    from search.reports import exact_duplicates, near_duplicates, resolve_tiers
    from search.review import hide_decided

    groups = exact_duplicates(engine)
    if tier != "exact":
        near = near_duplicates(engine, resolve_tiers(tier), k=k, phash=phash)
        groups += [g for gs in near.groups.values() for g in gs]
    return hide_decided(engine, groups)


def _echo_plan(plan: Any, quarantine: Path, moved: bool) -> None:
    if not plan.moves and not plan.skipped:
        typer.echo("no duplicate groups left to resolve")
        return
    keeper = None
    for m in plan.moves:
        if m.keeper_id != keeper:
            keeper = m.keeper_id
            typer.echo(f"{m.tier}: keep {m.keeper_path} (id {m.keeper_id})")
        typer.echo(f"    move {m.path} (id {m.id})")
    for g, reason in plan.skipped:
        typer.echo(f"skipped the {g.tier} group of {g.keeper.path} (id {g.keeper.id}): {reason}")
    groups = len({m.keeper_id for m in plan.moves})
    verb = "moved" if moved else "would move"
    typer.echo(f"{len(plan.moves)} file(s) from {groups} group(s) {verb} into {quarantine}/")


@user_errors
def dedupe(
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    tier: str = typer.Option(
        "near-duplicate",
        "--tier",
        help="Exact duplicates and the near-duplicate tiers down to this one: exact, near-identical, "
        "near-duplicate or similar. Only duplicates are resolved in bulk; 'similar' lists.",
    ),
    apply: bool = typer.Option(False, "--apply", help="Move the files; without it, only say what would move."),
    keeper: int | None = typer.Option(
        None, "--keeper", help="One group by hand: the id of the image to keep [default: none: every group]."
    ),
    members: str | None = typer.Option(
        None, "--members", help="With --keeper: ids of the others, like 3,17,42 [default: none]."
    ),
    dismiss: bool = typer.Option(
        False, "--dismiss", help="With --keeper/--members: record them as not duplicates instead (moves nothing)."
    ),
    k: int = typer.Option(16, "-k", min=2, help="Neighbours per image when looking for near-duplicates."),
    phash: bool = typer.Option(True, "--phash/--no-phash", help="Also join neighbours with close perceptual hashes."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts instead of lines."),
) -> None:
    """Resolve duplicate groups: keep each group's suggested keeper, move the others into the
    index's quarantine (INDEX/quarantine/BATCH/, paths kept). A dry run unless --apply."""
    from search.engine import Engine
    from search.review import Plan, plan_groups, plan_resolution, recover, resolve
    from search.review import dismiss as dismiss_group
    from search.review.moves import quarantine_root

    if tier not in TIER_CHOICES:
        raise UsageError(f"--tier {tier!r}: one of {', '.join(TIER_CHOICES)}")
    if (keeper is None) != (members is None):
        raise UsageError("--keeper and --members go together")
    if dismiss and keeper is None:
        raise UsageError("--dismiss needs --keeper and --members")
    if apply and keeper is None and tier == "similar":
        raise UsageError(
            "similar images are alike, not duplicates: resolve them one group at a time with --keeper and --members"
        )
    idx = index_for(index_dir)
    recovered = recover(idx)
    for line in recovered:
        typer.echo(f"recovered an interrupted operation: {line}", err=True)
    engine = Engine(idx)
    try:
        if dismiss:
            new = dismiss_group(engine, keeper, _ids(members or ""), tier)
            if as_json:
                typer.echo(json.dumps({"dismissed": [keeper, *_ids(members or "")], "new_pairs": new}))
            else:
                typer.echo(f"recorded as not duplicates ({new} new pair(s)); the group stays out of reports")
            return
        if keeper is not None:
            plan = Plan(plan_resolution(engine, keeper, _ids(members or ""), tier))
        else:
            plan = plan_groups(engine, _groups(engine, tier, k, phash))
        batch = resolve(engine, plan.moves) if apply and plan.moves else None
    finally:
        engine.close()
    if as_json:
        out = {
            "dry_run": not apply,
            "moves": [m.as_dict() for m in plan.moves],
            "skipped": [{"tier": g.tier, "keeper_id": g.keeper.id, "reason": r} for g, r in plan.skipped],
            "batch": batch.as_dict() if batch else None,
            "recovered": recovered,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    quarantine = quarantine_root(idx.resolve())
    _echo_plan(plan, quarantine / batch.batch if batch else quarantine, batch is not None)
    if batch is not None:
        typer.echo(f"undo with: lookalike restore {batch.batch} --index {idx} --apply")
    elif not apply and plan.moves:
        typer.echo("dry run: nothing moved; --apply moves them")


@user_errors
def restore(
    batch: str | None = typer.Argument(None, help="The batch to put back [default: the newest]."),
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    every: bool = typer.Option(False, "--all", help="Every batch still in the quarantine."),
    apply: bool = typer.Option(False, "--apply", help="Move the files back; without it, only say what would move."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts instead of lines."),
) -> None:
    """Undo `lookalike dedupe --apply`: put a quarantine batch's files back where they were.
    A dry run unless --apply; with no BATCH, the newest batch."""
    from indexer import Catalog
    from search.review import batches, recover
    from search.review import restore as restore_batches

    if batch is not None and every:
        raise UsageError("give a BATCH or --all, not both")
    idx = index_for(index_dir)
    for line in recover(idx):
        typer.echo(f"recovered an interrupted operation: {line}", err=True)
    if apply:
        chosen = restore_batches(idx, batch, every=every)
    else:
        catalog = Catalog.for_directory(idx, read_only=True)
        try:
            active = batches(catalog)
        finally:
            catalog.close()
        chosen = [b for b in active if b.batch == batch] if batch else active if every else active[:1]
        if batch and not chosen:
            raise UsageError(f"no quarantined batch {batch}; `lookalike restore --all` lists them")
    if as_json:
        typer.echo(json.dumps({"dry_run": not apply, "batches": [b.as_dict() for b in chosen]}, indent=2))
        return
    if not chosen:
        typer.echo("nothing is in the quarantine")
    for b in chosen:
        typer.echo(f"{b.batch} ({len(b.files)} file(s), moved {b.moved_at:%Y-%m-%d %H:%M})")
        for f in b.files:
            typer.echo(f"    {f.quarantine_path} -> {f.path}")
    if chosen:
        typer.echo("restored" if apply else "dry run: nothing moved; --apply puts them back")
