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

from encoder import CheckpointError, ImageLoadError, ModelConfig, TrainConfig, TrainError, list_models
from indexer import CatalogError, IndexBuildError, default_index_dir

app = typer.Typer(
    name="lookalike",
    help="Self-hosted semantic image search: learn your images with an autoencoder, find look-alikes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Library errors a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    IndexBuildError,
    CatalogError,
    TrainError,
    CheckpointError,
    ImageLoadError,
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


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail.")) -> None:
    setup_logging(verbose)


def model_config_from_options(
    kind: str, image_size: int, latent_dim: int, upsample: str, downsample: str, extra: dict[str, Any] | None = None
) -> ModelConfig:
    if kind not in list_models():
        raise ValueError(f"unknown --kind {kind!r}; known: {', '.join(list_models())}")
    cfg = ModelConfig(kind=kind, image_size=image_size, latent_dim=latent_dim, upsample=upsample, downsample=downsample)
    for key, value in (extra or {}).items():
        if value is not None:
            setattr(cfg, key, value)
    cfg.validate()
    return cfg


@app.command()
@user_errors
def train(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images (searched recursively)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory [default: FOLDER/.lookalike/model]."),
    kind: str = typer.Option("conv", help="Autoencoder variant (see `lookalike models`)."),
    image_size: int = typer.Option(ModelConfig.image_size, help="Square input side in pixels."),
    latent_dim: int = typer.Option(ModelConfig.latent_dim, help="Size of the search vector."),
    upsample: str = typer.Option("transpose", help="Decoder upsampling: transpose or bilinear."),
    downsample: str = typer.Option("stride", help="Encoder downsampling: stride or pool."),
    epochs: int | None = typer.Option(None, help="Epochs [default: enough for ~500 steps]."),
    batch_size: int = typer.Option(TrainConfig.batch_size),
    lr: float = typer.Option(TrainConfig.lr, help="Peak learning rate (AdamW)."),
    augment: str = typer.Option(TrainConfig.augment, help="none, flip or invariant."),
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
    from encoder import train as train_model

    mcfg = model_config_from_options(
        kind,
        image_size,
        latent_dim,
        upsample,
        downsample,
        {
            "tied": tied or None,
            "beta": beta,
            "noise_std": noise_std,
            "noise": noise,
            "sparsity": sparsity,
            "sparsity_weight": sparsity_weight,
        },
    )
    tcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, augment=augment, seed=seed, device=device)
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
    workers: int | None = typer.Option(None, help="Decoding processes [default: one per core]."),
    batch_size: int = typer.Option(256, help="Images embedded and committed together."),
    checkpoint_every: float = typer.Option(20.0, help="Save vectors at least this often, in seconds (crash safety)."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
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
    typer.echo(
        f"  {summary.embedded} embedded in {summary.duration_s:.1f} s ({summary.images_per_second:.0f} images/s); "
        f"index type {summary.index_type}: {summary.index_reason}"
    )
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
) -> None:
    """The main job: train a model on FOLDER (if it has none yet), index it and serve it."""
    from indexer import build_index

    typer.echo(f"indexing {folder} (the first run trains a model on it first) ...")
    summary = build_index(folder, device=device, train_config=TrainConfig(seed=seed, device=device))
    print_index_summary(summary)
    if summary.trained:
        model_dir = Path(summary.index_dir) / "model"
        typer.echo(f"model pictures: {model_dir / 'loss.png'}, {model_dir / 'reconstructions.png'}")


@app.command()
def models() -> None:
    """List the autoencoder variants `--kind` accepts."""
    for name in list_models():
        typer.echo(name)


# Commands that live in their own modules register themselves on `app` when imported.
from search import cli_model_uses  # noqa: E402,F401
