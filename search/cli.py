"""The `lookalike` command: a thin shell over the library.

Each command parses options, calls one library function, and turns the
library's own exceptions into a one-line message and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import typer

# Only light imports at module level: decoding worker processes re-import the main
# module, and torch/faiss would cost each of them seconds and hundreds of MiB.
from encoder.errors import LookalikeError
from indexer.layout import NEIGHBOURS_K, default_index_dir

app = typer.Typer(
    name="lookalike",
    help="Self-hosted semantic image search: learn your images with an autoencoder, find look-alikes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Library errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    LookalikeError,
    FileNotFoundError,
    NotADirectoryError,
    ValueError,
)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a library error into `error: message` on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # "Loading faiss." on every command


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail.")) -> None:
    setup_logging(verbose)


def model_config_from_options(options: dict[str, Any]) -> Any:
    """The default ModelConfig with every option the user gave (None = not given) applied."""
    from encoder import ModelConfig, list_models

    cfg = ModelConfig()
    kind = options.get("kind") or cfg.kind
    if kind not in list_models():
        raise ValueError(f"unknown --kind {kind!r}; known: {', '.join(list_models())}")
    for key, value in options.items():
        if value is not None:
            setattr(cfg, key, value)
    cfg.kind = kind
    cfg.validate()
    return cfg


@app.command()
@user_errors
def train(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images (searched recursively)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory [default: FOLDER/.lookalike/model]."),
    kind: str | None = typer.Option(None, help="Autoencoder variant (see `lookalike models`) [default: the best]."),
    image_size: int | None = typer.Option(None, help="Square input side in pixels [default: the model's]."),
    latent_dim: int | None = typer.Option(None, help="Size of the search vector [default: the model's]."),
    upsample: str | None = typer.Option(None, help="Decoder upsampling: transpose or bilinear."),
    downsample: str | None = typer.Option(None, help="Encoder downsampling: stride or pool."),
    epochs: int | None = typer.Option(None, help="Epochs [default: enough for ~500 steps]."),
    batch_size: int | None = typer.Option(None, help="Images per step [default: 32]."),
    lr: float | None = typer.Option(None, help="Peak learning rate (AdamW) [default: 2e-3]."),
    augment: str | None = typer.Option(None, help="none, flip or invariant [default: invariant]."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same model."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, mps [default: best available]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch's checkpoint in OUT."),
    tied: bool = typer.Option(False, "--tied", help="dense: tie decoder weights to the encoder's."),
    beta: float | None = typer.Option(None, help="vae/cvae: weight of the KL term (beta-VAE)."),
    noise_std: float | None = typer.Option(None, help="denoising: Gaussian noise std."),
    noise: str | None = typer.Option(None, help="denoising: gaussian or mask."),
    sparsity: str | None = typer.Option(None, help="sparse: l1 or kl."),
    sparsity_weight: float | None = typer.Option(None, help="sparse: penalty weight."),
) -> None:
    """Train an autoencoder on a folder of images; write the model, loss.png and reconstructions.png."""
    from encoder import TrainConfig
    from encoder import train as train_model

    mcfg = model_config_from_options(
        {
            "kind": kind,
            "image_size": image_size,
            "latent_dim": latent_dim,
            "upsample": upsample,
            "downsample": downsample,
            "tied": tied or None,
            "beta": beta,
            "noise_std": noise_std,
            "noise": noise,
            "sparsity": sparsity,
            "sparsity_weight": sparsity_weight,
        }
    )
    given = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "augment": augment}
    tcfg = TrainConfig(seed=seed, device=device, **{k: v for k, v in given.items() if v is not None})
    out = out or default_index_dir(folder) / "model"
    result = train_model(folder, out, mcfg, tcfg, resume=resume)
    for path, why in result.skipped:
        typer.echo(f"skipped {path}: {why}", err=True)
    typer.echo(
        f"trained {mcfg.kind} on {result.images} images: {result.epochs_run} epochs, best epoch {result.best_epoch} "
        f"(validation loss {result.best_val_loss:.4f}), {result.images_per_second:.0f} images/s"
    )
    typer.echo(f"model: {out}\nloss curve: {out / 'loss.png'}\nreconstructions: {out / 'reconstructions.png'}")


@app.command()
@user_errors
def index(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images to index."),
    index_dir: Path | None = typer.Option(None, "--index", help="Index directory [default: FOLDER/.lookalike]."),
    model: Path | None = typer.Option(
        None, "--model", help="Model directory [default: the index's own; trains one if none]."
    ),
    index_type: str = typer.Option("auto", help="auto, flat, hnsw, ivf or ivfpq."),
    reembed: bool = typer.Option(False, "--reembed", help="Re-embed every image (needed after changing the model)."),
    catalog: str | None = typer.Option(None, help="SQLAlchemy URL of the catalog [default: SQLite in the index]."),
    workers: int | None = typer.Option(
        None, help="Parallel decoders (threads; processes above 8 cores), 0 = none [default: one per core]."
    ),
    batch_size: int = typer.Option(256, help="Images embedded and committed together."),
    checkpoint_every: float = typer.Option(20.0, help="Save vectors at least this often, in seconds (crash safety)."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
    neighbours: int = typer.Option(
        NEIGHBOURS_K, min=0, help="Neighbours of each image precomputed for fast by-id queries; 0 = none."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Index a folder: add new images, re-embed changed ones, follow moves, drop deleted ones."""
    from indexer import build_index

    summary = build_index(
        folder,
        index_dir,
        model,
        index_type=index_type,
        reembed=reembed,
        catalog_url=catalog,
        workers=workers,
        device=device,
        batch_size=batch_size,
        checkpoint_every_s=checkpoint_every,
        neighbours=neighbours,
    )
    if as_json:
        import json

        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    print_index_summary(summary)


def print_index_summary(summary: Any) -> None:
    rows = [
        ("added", summary.added),
        ("updated", summary.updated),
        ("moved", summary.moved),
        ("removed", summary.removed),
        ("unchanged", summary.unchanged),
        ("exact duplicates", summary.duplicates),
        ("failed", len(summary.failed)),
        ("total indexed", summary.total),
    ]
    for name, value in rows:
        typer.echo(f"  {name:<17}{value:>8}")
    trained = f"trained a model in {summary.train_s:.1f} s, then " if summary.trained else ""
    typer.echo(
        f"  {trained}{summary.embedded} embedded in {summary.duration_s - summary.train_s:.1f} s "
        f"({summary.images_per_second:.0f} images/s); index type {summary.index_type}: {summary.index_reason}"
    )
    if summary.neighbours:
        typer.echo(f"  {summary.neighbours}")
    if summary.failed:
        typer.echo("failed files:")
        for path, why in summary.failed[:50]:
            typer.echo(f"  {path}: {why}")
        if len(summary.failed) > 50:
            typer.echo(f"  ... and {len(summary.failed) - 50} more (--json lists all)")
    typer.echo(f"index: {summary.index_dir}")


@app.command()
@user_errors
def up(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images."),
    seed: int = typer.Option(0, help="Random seed for training."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
    port: int | None = typer.Option(None, help="Port to serve on [default: 8000]."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Train and index only."),
) -> None:
    """The main job: train a model on FOLDER (if it has none yet), index it and serve it."""
    from encoder import TrainConfig
    from indexer import build_index

    typer.echo(f"indexing {folder} (the first run trains a model on it first) ...")
    summary = build_index(folder, device=device, train_config=TrainConfig(seed=seed, device=device))
    print_index_summary(summary)
    if summary.trained:
        model_dir = Path(summary.index_dir) / "model"
        typer.echo(f"model pictures: {model_dir / 'loss.png'}, {model_dir / 'reconstructions.png'}")
    if not no_serve:
        serve_index(Path(summary.index_dir), None, port, device)


def _index_for(folder_or_index: Path | None) -> Path:
    """Accept an index directory, or a folder that has one in .lookalike/."""
    path = folder_or_index or Path(".")
    if (path / "manifest.json").exists():
        return path
    if (default_index_dir(path) / "manifest.json").exists():
        return default_index_dir(path)
    raise FileNotFoundError(f"no index at {path} or {default_index_dir(path)}; run `lookalike index FOLDER` first")


@app.command()
@user_errors
def query(
    image: Path | None = typer.Argument(None, help="Query image file (need not be indexed)."),
    image_id: int | None = typer.Option(None, "--id", help="Query by the id of an indexed image instead."),
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    k: int = typer.Option(10, "-k", min=1, help="How many results."),
    min_similarity: float | None = typer.Option(None, help="Drop results below this cosine similarity."),
    path_prefix: str | None = typer.Option(None, help="Only images whose path starts with this."),
    as_json: bool = typer.Option(False, "--json", help="JSON for scripts instead of a table."),
    grid: Path | None = typer.Option(None, "--grid", help="Also write a picture of the query and its results."),
) -> None:
    """Find the indexed images most like IMAGE (or like indexed image --id N)."""
    from search.engine import Engine

    if (image is None) == (image_id is None):
        raise ValueError("give either an IMAGE or --id N")
    engine = Engine(_index_for(index_dir))
    opts = {"k": k, "min_similarity": min_similarity, "path_prefix": path_prefix}
    hits = engine.search_id(image_id, **opts) if image_id is not None else engine.search_image(image, **opts)
    if grid is not None:
        from search.result_grid import save_result_grid

        written = save_result_grid(engine, image_id if image_id is not None else image, hits, grid)
        typer.echo(f"wrote {written}", err=as_json)  # keep stdout pure JSON with --json
    if as_json:
        import json

        query_desc = {"id": image_id} if image_id is not None else {"path": str(image)}
        typer.echo(json.dumps({"query": query_desc, "results": [h.as_dict() for h in hits]}, indent=2))
        return
    if not hits:
        typer.echo("no results")
    typer.echo(f"{'rank':>4}  {'similarity':>10}  {'id':>7}  path")
    for rank, h in enumerate(hits, 1):
        typer.echo(f"{rank:>4}  {h.similarity:>10.4f}  {h.id:>7}  {h.path}")


@app.command()
@user_errors
def serve(
    index_dir: Path | None = typer.Option(
        None, "--index", help="Index directory, or the folder it indexes [default: .]"
    ),
    host: str | None = typer.Option(None, help="Address to bind [default: 127.0.0.1, this machine only]."),
    port: int | None = typer.Option(None, help="Port [default: 8000]."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Serve the search API and web page (LOOKALIKE_* environment variables set the defaults)."""
    serve_index(_index_for(index_dir), host, port, device)


def serve_index(index: Path, host: str | None, port: int | None, device: str | None) -> None:
    import uvicorn

    from search.api import create_app
    from search.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "device": device}.items() if v is not None}
    settings = Settings(index=index, **overrides)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_token:
        typer.echo(
            f"warning: serving on {settings.host} without LOOKALIKE_API_TOKEN: anyone who can reach it can search",
            err=True,
        )
    typer.echo(f"serving {index} at http://{settings.host}:{settings.port}/  (Ctrl+C stops)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@app.command()
def models() -> None:
    """List the autoencoder variants `--kind` accepts."""
    from encoder import list_models

    for name in list_models():
        typer.echo(name)


# Commands that live in their own modules register themselves on `app` when imported.
from search import cli_model_uses, cli_report  # noqa: E402,F401
