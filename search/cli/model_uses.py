"""Commands that use a trained model directly: denoise, reconstruct, generate, compress, evaluate."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from .common import UsageError, user_errors

MODEL_HELP = "Model directory (as written by `lookalike train`)."


def _load(model_dir: Path, device: str | None):
    from encoder import load_model
    from encoder.device import pick_device

    return load_model(model_dir, pick_device(device))


def _image_tensor(model, image: Path):
    from encoder import load_image
    from encoder.images import to_tensor_batch

    pixels = np.array(load_image(image, model.config.image_size))[None]  # (1, S, S, 3), writable
    return to_tensor_batch(pixels).to(next(model.parameters()).device)


def _save_picture(batch, path: Path) -> None:
    from PIL import Image

    from encoder.plots import to_uint8_images

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_images(batch)[0]).save(path)


def compression_report(model, pixels: np.ndarray) -> dict[str, Any]:
    """Size of a VQ-VAE's codes for one (S, S, 3) uint8 image against PNG and JPEG of the same pixels."""
    import torch
    from PIL import Image

    from encoder.images import to_tensor_batch

    if not hasattr(model, "codes"):
        raise UsageError(f"a {model.config.kind!r} model has no discrete codes; train one with --kind vqvae")
    img = Image.fromarray(pixels)
    sizes = {}
    for fmt, opts in (("png", {"optimize": True}), ("jpeg", {"quality": 75})):
        buf = io.BytesIO()
        img.save(buf, fmt.upper(), **opts)
        sizes[fmt] = len(buf.getvalue())
    x = to_tensor_batch(np.array(pixels)[None]).to(next(model.parameters()).device)
    with torch.no_grad():
        recon = model.decode_codes(model.codes(x))
    mse = float(((recon.float() - x) ** 2).mean())
    code_bytes = model.code_bits / 8
    return {
        "image_size": model.config.image_size,
        "raw_bytes": int(pixels.nbytes),
        "code_bytes": code_bytes,
        "png_bytes": sizes["png"],
        "jpeg_bytes": sizes["jpeg"],
        "ratio_vs_png": sizes["png"] / code_bytes,
        "ratio_vs_jpeg": sizes["jpeg"] / code_bytes,
        "ratio_vs_raw": pixels.nbytes / code_bytes,
        "reconstruction_psnr_db": float(10 * np.log10(1.0 / max(mse, 1e-12))),
    }


@user_errors
def denoise(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Image to clean up."),
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the denoised PNG."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Run an image through a (denoising) autoencoder and write the cleaned image, at the model's input size."""
    import torch

    net = _load(model, device)
    if net.config.kind != "denoising":
        typer.echo(f"note: {net.config.kind!r} model was not trained to denoise; writing its reconstruction", err=True)
    with torch.no_grad():
        _save_picture(net.reconstruct(_image_tensor(net, image), None), out)
    typer.echo(f"denoised: {out}")


@user_errors
def reconstruct(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Image to reconstruct."),
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help=MODEL_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Side-by-side PNG [default: MODEL/reconstructions/IMAGE_reconstruction.png]."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Write the image and the model's reconstruction of it side by side, with the reconstruction error."""
    import torch

    from encoder.plots import image_grid, to_uint8_images

    net = _load(model, device)
    x = _image_tensor(net, image)
    with torch.no_grad():
        recon = net.reconstruct(x, None)
    # Never beside IMAGE by default: that is usually an indexed folder, and the next `index` would
    # index the picture. The model's own directory is not (an index skips its .lookalike/).
    out = out or model / "reconstructions" / f"{image.stem}_reconstruction.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    pair = np.concatenate([to_uint8_images(x), to_uint8_images(recon)])
    image_grid([pair], labels=["input | output"]).save(out)
    typer.echo(f"reconstruction error (MSE) {float(((recon.float() - x) ** 2).mean()):.5f}: {out}")


@user_errors
def generate(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help=MODEL_HELP),
    n: int = typer.Option(16, "--n", min=1, max=1024, help="How many images to sample."),
    label: str | None = typer.Option(None, help="cvae: the label (folder) to generate [default: none: any]."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Grid PNG to write [default: MODEL/samples.png]."),
    seed: int = typer.Option(0, help="Random seed for the samples."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Sample new images from a VAE's or CVAE's prior, z ~ N(0, I), and write them as a grid."""
    import torch

    from encoder.plots import image_grid, to_uint8_images

    net = _load(model, device)
    if not hasattr(net, "sample"):
        raise UsageError(f"a {net.config.kind!r} model cannot generate; train one with --kind vae or --kind cvae")
    labels = None
    if label is not None:
        if not hasattr(net, "label_id"):
            raise UsageError("--label needs a conditional model (--kind cvae)")
        labels = torch.full((n,), net.label_id(label), dtype=torch.long)
    gen = torch.Generator(device=next(net.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        images = to_uint8_images(net.sample(n, labels, generator=gen))
    out = out or model / "samples.png"  # not the current folder, which may be an indexed one
    per_row = max(1, int(np.ceil(np.sqrt(n))))
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid([images[i : i + per_row] for i in range(0, n, per_row)]).save(out)
    typer.echo(f"{n} samples{f' of {label!r}' if label else ''}: {out}")


@user_errors
def compress(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Image to compress."),
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help=MODEL_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also write the image decoded from its codes [default: none]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """vqvae: the size of an image's codes against PNG and JPEG of the same (letterboxed) input."""
    import torch

    from encoder import load_image

    net = _load(model, device)
    pixels = load_image(image, net.config.image_size)
    report = compression_report(net, pixels)
    if out is not None:
        with torch.no_grad():
            x = _image_tensor(net, image)
            _save_picture(net.decode_codes(net.codes(x)), out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    s = report["image_size"]
    typer.echo(
        f"{s}x{s} input: codes {report['code_bytes']:g} B, PNG {report['png_bytes']} B "
        f"({report['ratio_vs_png']:.1f}x the codes), JPEG q75 {report['jpeg_bytes']} B "
        f"({report['ratio_vs_jpeg']:.1f}x), raw {report['raw_bytes']} B; "
        f"decoded from codes: PSNR {report['reconstruction_psnr_db']:.1f} dB"
    )


@user_errors
def evaluate(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Labelled folder: subfolder = label."),
    model: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="Model directory, or KIND[:key=value,...] to train here (repeatable) [default: none: baselines only].",
    ),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Folder for report.json, report.md, report.png."),
    label_column: str | None = typer.Option(
        None, help="Take labels from this column of FOLDER/labels.csv [default: none: the folders]."
    ),
    max_images: int | None = typer.Option(
        None, help="Evaluate a seeded random subset of this many images [default: all]."
    ),
    near_duplicates: int = typer.Option(200, help="Images altered for near-duplicate recall (0: skip)."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same report."),
    device: str | None = typer.Option(None, help="cpu, cuda, mps [default: best available]."),
) -> None:
    """Retrieval quality by label (precision@1, precision@10, mAP@10) against raw-pixel and PCA baselines."""
    from search.evaluation import evaluate as run_evaluation
    from search.evaluation import to_markdown, write_report

    report = run_evaluation(
        folder,
        model or ["conv"],
        work_dir=out / "models",
        label_column=label_column,
        max_images=max_images,
        near_duplicates=near_duplicates,
        seed=seed,
        device=device,
    )
    paths = write_report(report, out)
    typer.echo(to_markdown(report))
    typer.echo(f"{report.images} images, {report.labels} labels ({report.label_source}), {report.seconds:.0f} s")
    typer.echo(f"report: {paths['json']}, {paths['markdown']}, {paths['chart']}")


def models() -> None:
    """List the autoencoder variants `--kind` accepts, one a line, the default marked."""
    from encoder import ModelConfig, list_models
    from encoder.registry import describe_model

    default = ModelConfig().kind
    width = max(len(n) for n in list_models())
    for name in list_models():
        mark = "*" if name == default else " "
        typer.echo(f"{mark} {name:<{width}}  {describe_model(name)}")
    typer.echo("* the default")
