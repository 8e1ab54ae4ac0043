"""`lookalike train`, `index` and `up`: learn a folder, index it, and the whole main job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from encoder.config import ModelConfig
from indexer.layout import MODEL_DIR, NEIGHBOURS_K, default_index_dir

from .common import UsageError, user_errors
from .serve import bind, serve_watching, server_settings
from .watching import echo_watch_run, outgrown_note, start_watching

_MODEL = ModelConfig()  # the defaults the help shows


POOLING_HELP = (
    "How the search vector is pooled from the encoder's feature maps: vlad (VLAD over local-feature "
    "words fitted on the folder: better retrieval on every collection measured; models with a conv trunk) "
    "or mean (each stage averaged: about twice the embedding rate; docs/benchmarks.md) "
    "[default: vlad where the model has a conv trunk, else mean]."
)


def model_config_from_options(options: dict[str, Any]) -> Any:
    """The default ModelConfig with every option the user gave (None = not given) applied."""
    from encoder import ModelConfig, list_models

    cfg = ModelConfig()
    kind = options.get("kind") or cfg.kind
    if kind not in list_models():
        raise UsageError(f"unknown --kind {kind!r}; known: {', '.join(list_models())}")
    for key, value in options.items():
        if value is not None:
            setattr(cfg, key, value)
    cfg.kind = kind
    cfg.validate()
    return cfg


@user_errors
def train(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images (searched recursively)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory [default: FOLDER/.lookalike/model]."),
    kind: str | None = typer.Option(None, help="Autoencoder variant (see `lookalike models`) [default: the best]."),
    image_size: int | None = typer.Option(None, help="Square input side in pixels [default: the model's]."),
    latent_dim: int | None = typer.Option(None, help="Size of the search vector [default: the model's]."),
    upsample: str | None = typer.Option(
        None, help=f"Decoder upsampling: transpose or bilinear [default: {_MODEL.upsample}]."
    ),
    downsample: str | None = typer.Option(
        None, help=f"Encoder downsampling: stride or pool [default: {_MODEL.downsample}]."
    ),
    epochs: int | None = typer.Option(
        None, help="Epochs [default: the step budget: 500 steps up to 1,000 images, then growing as the square root]."
    ),
    batch_size: int | None = typer.Option(None, help="Images per step [default: 32]."),
    lr: float | None = typer.Option(None, help="Peak learning rate (AdamW) [default: 2e-3]."),
    augment: str | None = typer.Option(None, help="none, flip, invariant or strong [default: invariant]."),
    init_from: str | None = typer.Option(
        None,
        help="Start from these weights: a model directory, 'base' for the base model shipped with lookalike "
        "(pretrained on licence-clean artwork; see encoder/base_model/PROVENANCE.md), or 'none' for random weights "
        "[default: the base model when the model asked for is its configuration (the default one), else random "
        "weights].",
    ),
    pooling: str | None = typer.Option(None, help=POOLING_HELP),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same model."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, mps [default: best available]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch's checkpoint in OUT."),
    tied: bool = typer.Option(False, "--tied", help="dense: tie decoder weights to the encoder's."),
    beta: float | None = typer.Option(
        None, help=f"vae/cvae: weight of the KL term (beta-VAE) [default: {_MODEL.beta}]."
    ),
    noise_std: float | None = typer.Option(None, help=f"denoising: Gaussian noise std [default: {_MODEL.noise_std}]."),
    noise: str | None = typer.Option(None, help=f"denoising: gaussian or mask [default: {_MODEL.noise}]."),
    sparsity: str | None = typer.Option(None, help=f"sparse: l1 or kl [default: {_MODEL.sparsity}]."),
    sparsity_weight: float | None = typer.Option(
        None, help=f"sparse: penalty weight [default: {_MODEL.sparsity_weight}]."
    ),
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
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augment": augment,
        "init_from": init_from,
        "pooling": pooling,
    }
    tcfg = TrainConfig(seed=seed, device=device, **{k: v for k, v in given.items() if v is not None})
    out = out or default_index_dir(folder) / MODEL_DIR
    result = train_model(folder, out, mcfg, tcfg, resume=resume)
    for path, why in result.skipped:
        typer.echo(f"skipped {path}: {why}", err=True)
    typer.echo(
        f"trained {mcfg.kind} on {result.images} images: {result.epochs_run} epochs, best epoch {result.best_epoch} "
        f"(validation loss {result.best_val_loss:.4f}), {result.images_per_second:.0f} images/s"
    )
    typer.echo(f"model: {out}\nloss curve: {out / 'loss.png'}\nreconstructions: {out / 'reconstructions.png'}")


@user_errors
def index(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images to index."),
    index_dir: Path | None = typer.Option(None, "--index", help="Index directory [default: FOLDER/.lookalike]."),
    model: Path | None = typer.Option(
        None, "--model", help="Model directory [default: the index's own; trains one if none]."
    ),
    index_type: str = typer.Option(
        "auto",
        help="auto, flat, hnsw, ivf, ivfpq, ivfpq-disk (inverted lists on disk, memory-mapped) or"
        " ivfsq8-disk (the same with 8-bit scalar codes: 3.6x the disk, quicker to build and query).",
    ),
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
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Decode and embed on Ray (pip install 'lookalike[ray]'): on the cluster of --ray-address or "
        "$RAY_ADDRESS, else on a Ray started on this machine for the run. Every node must read the folder "
        "and the model at the same paths as this machine (a shared file system), and have lookalike installed.",
    ),
    ray_address: str | None = typer.Option(
        None,
        help="The Ray cluster for --ray (implies it): auto, ray://HOST:PORT or HOST:PORT "
        "[default: $RAY_ADDRESS, else a Ray started on this machine].",
    ),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Merge the vector segments into one before publishing (otherwise merged when more than 16, "
        "or a quarter of their rows deleted or replaced).",
    ),
    pooling: str | None = typer.Option(None, help=POOLING_HELP + " Used when this run trains the model."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Then keep watching FOLDER and index it again whenever images are added, changed, moved or "
        "deleted, a line a run, until Ctrl+C.",
    ),
) -> None:
    """Index a folder: add new images, re-embed changed ones, follow moves, drop deleted ones."""
    from encoder import TrainConfig
    from indexer import build_index
    from indexer.distribute import use_distributor
    from indexer.layout import default_index_dir
    from indexer.watch import FolderChanges, keep_current

    from ..review import recover

    # A review operation (dedupe --apply, restore) killed half-way left files in the
    # quarantine that the catalog may not know of: finish or undo it before the walk, or the
    # walk would take the moved files for deleted ones.
    target = index_dir if index_dir is not None else default_index_dir(folder)
    if target.is_dir():
        for line in recover(target, catalog):
            typer.echo(f"recovered an interrupted review operation: {line}", err=True)
    options = dict(
        index_type=index_type,
        catalog_url=catalog,
        workers=workers,
        device=device,
        batch_size=batch_size,
        checkpoint_every_s=checkpoint_every,
        neighbours=neighbours,
    )
    # watching starts before the first run, so that nothing that changes while it runs is missed
    changes = FolderChanges(folder, index_dir).start() if watch else None
    try:
        with use_distributor(ray_distributor(ray_address) if ray or ray_address else None):
            summary = build_index(
                folder,
                index_dir,
                model,
                reembed=reembed,
                merge=merge,
                train_config=TrainConfig(pooling=pooling, device=device) if pooling else None,
                **options,
            )
            if as_json:
                import json

                typer.echo(json.dumps(summary.as_dict(), indent=2))
            else:
                print_index_summary(summary)
            if changes is not None:
                typer.echo(f"watching {folder} for changes (Ctrl+C stops) ...", err=True)
                try:
                    keep_current(folder, index_dir, changes=changes, on_run=echo_watch_run, **options)
                except KeyboardInterrupt:
                    typer.echo("stopped watching; a run cut short is finished by the next one", err=True)
    finally:
        if changes is not None:
            changes.close()


def ray_distributor(address: str | None) -> Any:
    """The distributor of `--ray [--ray-address ADDRESS]`; says how to install Ray, before any
    work, when it is missing."""
    from indexer.ray_embed import RayDistributor, import_ray

    import_ray()
    return RayDistributor(address)


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
    if summary.merged:
        typer.echo(f"  {summary.merged}")
    if summary.adopted:
        typer.echo(f"  {summary.adopted} vectors taken from the shard files an interrupted run left (no re-embedding)")
    if summary.failed:
        typer.echo("failed files:")
        for path, why in summary.failed[:50]:
            typer.echo(f"  {path}: {why}")
        if len(summary.failed) > 50:
            typer.echo(f"  ... and {len(summary.failed) - 50} more (--json lists all)")
    if summary.trained:
        model_dir = Path(summary.index_dir) / MODEL_DIR
        typer.echo(f"model pictures: {model_dir / 'loss.png'}, {model_dir / 'reconstructions.png'}")
    if summary.outgrown:
        typer.echo(outgrown_note(summary))
    typer.echo(f"index: {summary.index_dir}")


@user_errors
def up(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of images."),
    seed: int = typer.Option(0, help="Random seed for training."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
    port: int | None = typer.Option(None, help="Port to serve on [default: 8000]."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Train and index only."),
    pooling: str = typer.Option("auto", help=POOLING_HELP + " Used when this run trains the model."),
    watch: bool = typer.Option(
        True,
        "--watch/--no-watch",
        help="While serving, index FOLDER again whenever images are added, changed, moved or deleted; "
        "the server switches to each new index as a whole.",
    ),
) -> None:
    """The main job: train a model on FOLDER (if it has none yet), index it and serve it."""
    from encoder import TrainConfig
    from indexer import build_index

    sock = settings = changes = None
    if not no_serve:  # the port first: a busy one is said before minutes of training, not after
        settings = server_settings(default_index_dir(folder), None, port, device)
        sock = bind(settings.host, settings.port)
    typer.echo(f"indexing {folder} (the first run trains a model on it first) ...")
    try:
        # watching starts before the first run, so that nothing that changes while it trains is missed
        changes = start_watching(folder) if watch and settings is not None else None
        train_config = TrainConfig(seed=seed, device=device, pooling=pooling)
        summary = build_index(folder, device=device, train_config=train_config)
    except BaseException:
        if sock is not None:
            sock.close()
        if changes is not None:
            changes.close()
        raise
    print_index_summary(summary)
    if settings is not None:
        serve_watching(settings, sock, folder, None, changes, device, off=" (--no-watch: off)")
