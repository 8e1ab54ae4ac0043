"""`lookalike query`: the nearest indexed images to an image file or an indexed id."""

from __future__ import annotations

from pathlib import Path

import typer

from ..pair_scale import top_share
from .common import UsageError, index_for, user_errors


@user_errors
def query(
    image: Path | None = typer.Argument(None, help="Query image file (need not be indexed)."),
    image_id: int | None = typer.Option(
        None, "--id", help="Query by the id of an indexed image instead [default: none]."
    ),
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    k: int = typer.Option(10, "-k", min=1, help="How many results."),
    min_similarity: float | None = typer.Option(
        None, help="Drop results below this similarity (0: unrelated, 1: the same) [default: none]."
    ),
    path_prefix: str | None = typer.Option(None, help="Only images whose path starts with this [default: none]."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts instead of a table."),
    grid: Path | None = typer.Option(
        None, "--grid", help="Also write a picture of the query and its results [default: none]."
    ),
) -> None:
    """Find the indexed images most like IMAGE (or like indexed image --id N)."""
    from search.engine import Engine

    if (image is None) == (image_id is None):
        raise UsageError("give either an IMAGE or --id N")
    engine = Engine(index_for(index_dir))
    opts = {"k": k, "min_similarity": min_similarity, "path_prefix": path_prefix}
    if image_id is not None:
        hits, same = engine.search_id(image_id, **opts), []
    else:
        hits, same = engine.query_image(image, **opts)
    if grid is not None:
        from .result_grid import save_result_grid

        written = save_result_grid(engine, image_id if image_id is not None else image, hits, grid)
        typer.echo(f"wrote {written}", err=as_json)  # keep stdout pure JSON with --json
    if image_id is not None:
        rec = engine.get(image_id)
        query_desc: dict = {"id": image_id, "path": rec.path}
        said = f"query: indexed image #{image_id} ({rec.path}); itself left out of the results"
    else:
        indexed = [{"id": i, "path": p} for i, p in same]
        query_desc = {"path": str(image), "indexed": indexed}
        said = f"query: {image}"
        if indexed:
            said += " = indexed image " + ", ".join(f"#{q['id']} ({q['path']})" for q in indexed)
            said += "; left out of the results"
    if as_json:
        import json

        typer.echo(json.dumps({"query": query_desc, "results": [h.as_dict() for h in hits]}, indent=2))
        return
    typer.echo(said)
    if not hits:
        total = engine.stats()["vectors"]
        typer.echo("no results: the index is empty" if not total else "no results (try a lower --min-similarity)")
        return
    # "of pairs": the similarity's place among the pairs of indexed images, one meaning in any folder
    typer.echo(f"{'rank':>4}  {'similarity':>10}  {'of pairs':>11}  {'id':>7}  path")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>4}  {h.similarity:>10.4f}  {top_share(h.percentile):>11}  {h.id:>7}  {h.path}")
