"""Retrieval quality: does a learned latent space find similar images better than pixels do?

A labelled folder goes in (label = a column of ``labels.csv`` when asked for,
else the image's folder relative to the root). Every image is a query; its k
nearest neighbours (itself excluded) are scored against its label:

- precision@1, precision@10: the share of the first k neighbours with the query's label;
- mAP@10: mean over queries of AP@10 = sum_{i<=10} P@i * rel_i / min(10, R), with R the
  number of other images that share the query's label;
- near-duplicate recall@1: an image is altered (resize, JPEG recompress, 10% crop,
  brightness, flip) and used as a query against the untouched corpus; a hit is when its
  original comes first.

Queries whose label has no other member are left out (they cannot score). Every method
is measured in the same run on the same decoded pixels: trained models (search vector =
``Encoder.embed_pixels``, unit length, cosine) and two baselines, raw pixels at the
model's input size and PCA at the model's search-vector dimension.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from encoder import Encoder, ModelConfig, TrainConfig, find_images, load_image, open_image
from encoder.decoding import decode_to_array

log = logging.getLogger(__name__)

K = 10
NEAR_DUPLICATE_TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "flip")

Embedder = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 -> (N, D) float32


class EvaluationError(Exception):
    """The folder cannot be evaluated (too few images or labels, unknown label column...)."""


# ---------------------------------------------------------------- the labelled corpus


@dataclass
class LabelledFolder:
    root: Path
    paths: list[Path]
    labels: list[str]
    label_source: str

    def __len__(self) -> int:
        return len(self.paths)


def read_labelled_folder(
    folder: str | os.PathLike,
    *,
    label_column: str | None = None,
    max_images: int | None = None,
    seed: int = 0,
    skip_dirs: tuple[str, ...] = (),
) -> LabelledFolder:
    """List a folder's images with their labels; `max_images` takes a seeded random subset."""
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationError(f"{root}: not a folder")
    paths = find_images(root, skip_dirs=skip_dirs)
    if label_column:
        table = root / "labels.csv"
        if not table.exists():
            raise EvaluationError(f"{root}: --label-column {label_column!r} needs a labels.csv")
        with open(table, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or label_column not in rows[0] or "path" not in rows[0]:
            raise EvaluationError(f"{table}: needs columns 'path' and {label_column!r}")
        by_path = {r["path"]: r[label_column] for r in rows}
        rel = [p.relative_to(root).as_posix() for p in paths]
        keep = [i for i, r in enumerate(rel) if r in by_path]
        paths, labels = [paths[i] for i in keep], [by_path[rel[i]] for i in keep]
        source = f"labels.csv column {label_column!r}"
    else:
        labels = [p.parent.relative_to(root).as_posix() if p.parent != root else "" for p in paths]
        source = "folder relative to the root"
    if max_images and len(paths) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths, labels = [paths[i] for i in pick], [labels[i] for i in pick]
    if len(paths) < 3 or len(set(labels)) < 2:
        raise EvaluationError(f"{root}: need at least 3 images and 2 labels, found {len(paths)} and {len(set(labels))}")
    return LabelledFolder(root, paths, labels, source)


# ---------------------------------------------------------------- metrics


def nearest_neighbours(vectors: np.ndarray, k: int = K, *, queries: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k most cosine-similar rows of `vectors` for each query, best first.

    Without `queries`, every row is a query and is excluded from its own neighbours.
    """
    v = _unit(vectors)
    q = v if queries is None else _unit(queries)
    exclude_self = queries is None
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), 1024):
        sim = q[s : s + 1024] @ v.T  # (b, N)
        if exclude_self:
            sim[np.arange(len(sim)), np.arange(s, s + len(sim))] = -np.inf
        kk = min(k, sim.shape[1] - 1) if exclude_self else min(k, sim.shape[1])
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
        out[s : s + len(sim), :kk] = np.take_along_axis(top, order, axis=1)
        out[s : s + len(sim), kk:] = -1
    return out


def retrieval_metrics(vectors: np.ndarray, labels: Sequence[str], k: int = K) -> dict[str, float]:
    """precision@1, precision@k and mAP@k over queries whose label has another member."""
    lab = np.asarray(labels)
    _, ids = np.unique(lab, return_inverse=True)
    counts = np.bincount(ids)
    relevant_total = counts[ids] - 1  # other images with the same label
    queries = np.flatnonzero(relevant_total > 0)
    nn = nearest_neighbours(vectors, k)[queries]
    rel = (ids[nn] == ids[queries, None]) & (nn >= 0)  # (Q, k)
    hits = np.cumsum(rel, axis=1)
    precision_at_i = hits / np.arange(1, k + 1)
    ap = (precision_at_i * rel).sum(axis=1) / np.minimum(k, relevant_total[queries])
    return {
        "precision_at_1": float(rel[:, 0].mean()),
        f"precision_at_{k}": float(rel.mean()),
        f"map_at_{k}": float(ap.mean()),
        "queries": int(len(queries)),
    }


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- near-duplicates


def near_duplicate_bytes(path: Path, transform: str, rng: np.random.Generator) -> bytes:
    """The file at `path`, altered the way a copy of it found elsewhere might be, as image bytes."""
    img, _ = open_image(path)
    fmt = "PNG"
    if transform == "resize":
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BILINEAR)
    elif transform == "jpeg":
        fmt = "JPEG"
    elif transform == "crop":
        # Remove 10% of width and height, split at random between the two sides.
        dw, dh = round(img.width * 0.1), round(img.height * 0.1)
        left, top = int(rng.integers(0, dw + 1)), int(rng.integers(0, dh + 1))
        img = img.crop((left, top, img.width - (dw - left), img.height - (dh - top)))
    elif transform == "brightness":
        img = ImageEnhance.Brightness(img).enhance(1.3)
    elif transform == "flip":
        img = ImageOps.mirror(img)
    else:
        raise ValueError(f"unknown near-duplicate transform {transform!r}")
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 60} if fmt == "JPEG" else {}))
    return buf.getvalue()


def near_duplicate_queries(
    paths: Sequence[Path], sizes: Sequence[int], n: int, seed: int
) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """Pick up to `n` images; return their indices and, per transform and size, the altered pixels."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(paths), min(n, len(paths)), replace=False))
    out: dict[str, dict[int, np.ndarray]] = {}
    for t in NEAR_DUPLICATE_TRANSFORMS:
        data = [near_duplicate_bytes(paths[i], t, rng) for i in pick]
        out[t] = {s: np.stack([load_image(d, s) for d in data]) for s in sizes}
    return pick, out


def near_duplicate_recall(
    embed: Embedder, gallery: np.ndarray, pick: np.ndarray, altered: dict[str, np.ndarray]
) -> dict[str, float]:
    """Recall@1 per transform (and their mean) of altered copies against the gallery vectors."""
    out = {}
    for t, pixels in altered.items():
        nn = nearest_neighbours(gallery, 1, queries=embed(pixels))[:, 0]
        out[t] = float((nn == pick).mean())
    out["mean"] = float(np.mean(list(out.values())))
    return out


# ---------------------------------------------------------------- baselines


def fit_pixels(pixels: np.ndarray) -> Embedder:
    """Raw pixels, flattened and centred on the corpus' mean image (cosine then compares what differs).

    Centring is what makes the baseline fair: on uncentred pixels every white-background
    image looks alike (mAP@10 0.11 against 0.20 centred on tuxpaint at 64 px).
    """
    mean = pixels.reshape(len(pixels), -1).astype(np.float32).mean(axis=0) / 255.0

    def embed(p: np.ndarray) -> np.ndarray:
        return p.reshape(len(p), -1).astype(np.float32) / 255.0 - mean

    return embed


def fit_pca(pixels: np.ndarray, dim: int, seed: int = 0) -> Embedder:
    """PCA of the corpus' pixels to `dim` components (randomised SVD with a fixed seed)."""
    x = pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0
    mean = x.mean(axis=0)
    dim = min(dim, len(x) - 1, x.shape[1])
    rng = np.random.default_rng(seed)
    # Randomised range finder (Halko et al.) with 2 power iterations: exact enough, fast on CPU.
    xc = x - mean
    q = xc @ rng.standard_normal((x.shape[1], dim + 10), dtype=np.float32)
    for _ in range(2):
        q, _ = np.linalg.qr(xc @ (xc.T @ q))
    _, _, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
    components = vt[:dim]  # (dim, F)

    def embed(p: np.ndarray) -> np.ndarray:
        return (p.reshape(len(p), -1).astype(np.float32) / 255.0 - mean) @ components.T

    return embed


# ---------------------------------------------------------------- models


@dataclass
class ModelSpec:
    """A model to evaluate: a trained model directory, or a kind to train on the folder first."""

    name: str
    model_dir: Path | None = None
    kind: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)


def spec_from_arg(arg: str) -> ModelSpec:
    """'DIR' (a model directory) or 'KIND[:key=value,...]', e.g. 'vae:beta=0.5,latent_dim=64'."""
    if Path(arg).is_dir():
        return ModelSpec(name=Path(arg).name, model_dir=Path(arg))
    kind, _, opts = arg.partition(":")
    overrides: dict[str, Any] = {}
    train_over: dict[str, Any] = {}
    train_fields = set(TrainConfig.__dataclass_fields__)
    for item in filter(None, opts.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad model option {item!r} in {arg!r}; expected key=value")
        value = _parse_value(raw)
        (train_over if key in train_fields else overrides)[key] = value
    return ModelSpec(name=arg, kind=kind, overrides=overrides, train_overrides=train_over)


def _parse_value(raw: str) -> Any:
    if "/" in raw:  # tuples: channels=16/32/64
        return tuple(_parse_value(r) for r in raw.split("/"))
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


def train_spec(
    spec: ModelSpec, folder: Path, work_dir: Path, model_defaults: dict[str, Any], train_defaults: dict[str, Any]
) -> Path:
    """Train `spec` on `folder` into `work_dir/NAME` (reused when already there)."""
    from encoder import train

    safe = "".join(c if c.isalnum() or c in "-_=." else "_" for c in spec.name)
    out = work_dir / safe
    if (out / "train_log.json").exists():
        log.info("reusing trained model %s", out)
        return out
    mcfg = ModelConfig(**{**model_defaults, "kind": spec.kind, **spec.overrides})
    tcfg = TrainConfig(**{**train_defaults, **spec.train_overrides})
    log.info("training %s on %s", spec.name, folder)
    train(folder, out, mcfg, tcfg, progress=False, skip_dirs=(str(work_dir),))
    return out


# ---------------------------------------------------------------- the evaluation


@dataclass
class MethodResult:
    name: str
    kind: str  # "model", "pixels" or "pca"
    image_size: int
    dim: int
    metrics: dict[str, float]
    near_duplicate_recall_at_1: dict[str, float] | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    model_dir: str | None = None
    baseline_for: str | None = None


@dataclass
class EvaluationReport:
    folder: str
    images: int
    labels: int
    label_source: str
    seed: int
    methods: list[MethodResult]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method(self, name: str) -> MethodResult:
        return next(m for m in self.methods if m.name == name)


def evaluate(
    folder: str | os.PathLike,
    models: Sequence[str | os.PathLike | ModelSpec],
    *,
    work_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
    max_images: int | None = None,
    near_duplicates: int = 200,
    seed: int = 0,
    model_defaults: dict[str, Any] | None = None,
    train_defaults: dict[str, Any] | None = None,
    device: str | None = None,
    workers: int | None = None,
) -> EvaluationReport:
    """Score each model (a directory, or a kind trained here) and the pixel and PCA baselines.

    Kinds are trained on the evaluated folder itself (unsupervised: labels are never
    seen, except by `cvae`, which conditions on folder names), into `work_dir`.
    """
    t_start = time.perf_counter()
    corpus = read_labelled_folder(
        folder, label_column=label_column, max_images=max_images, seed=seed, skip_dirs=_skip(work_dir)
    )
    specs = [m if isinstance(m, ModelSpec) else spec_from_arg(os.fspath(m)) for m in models]
    if any(s.kind for s in specs) and work_dir is None:
        raise EvaluationError("training a model kind needs a work_dir")
    train_defaults = {"seed": seed, "device": device, **(train_defaults or {})}
    if max_images:
        train_defaults.setdefault("max_images", None)

    # Train what needs training; a subset of the folder is trained on through a file list.
    trained: list[tuple[ModelSpec, Path, float | None]] = []
    train_root = Path(folder) if not max_images else _subset_folder(corpus, Path(work_dir or "."))
    for spec in specs:
        if spec.model_dir is not None:
            trained.append((spec, spec.model_dir, None))
            continue
        t0 = time.perf_counter()
        out = train_spec(spec, train_root, Path(work_dir), model_defaults or {}, train_defaults)  # type: ignore[arg-type]
        trained.append((spec, out, time.perf_counter() - t0))

    encoders = [(spec, Encoder(d, device=device), d, secs) for spec, d, secs in trained]
    sizes = sorted({e.image_size for _, e, _, _ in encoders} or {ModelConfig.image_size})
    pixels: dict[int, np.ndarray] = {}
    for s in sizes:
        arr, ok, failed = decode_to_array(corpus.paths, s, workers=workers)
        if failed:
            raise EvaluationError(f"{len(failed)} images failed to decode, e.g. {failed[0][0]}: {failed[0][1]}")
        pixels[s] = arr
    pick, altered = (np.zeros(0, np.int64), {})
    if near_duplicates:
        pick, altered = near_duplicate_queries(corpus.paths, sizes, near_duplicates, seed)

    def measure(name: str, kind: str, size: int, embed: Embedder, **extra: Any) -> MethodResult:
        t0 = time.perf_counter()
        vectors = embed(pixels[size])
        metrics = retrieval_metrics(vectors, corpus.labels)
        dup = None
        if near_duplicates:
            dup = near_duplicate_recall(embed, vectors, pick, {t: altered[t][size] for t in altered})
        res = MethodResult(name, kind, size, int(vectors.shape[1]), metrics, dup, time.perf_counter() - t0, **extra)
        log.info("%-28s mAP@10 %.3f  P@1 %.3f", name, metrics["map_at_10"], metrics["precision_at_1"])
        return res

    methods: list[MethodResult] = []
    baselines_done: set[tuple[str, int, int]] = set()
    for spec, enc, d, secs in encoders:
        methods.append(
            measure(spec.name, "model", enc.image_size, enc.embed_pixels, train_seconds=secs, model_dir=os.fspath(d))
        )
        size, dim = enc.image_size, enc.dim
        if ("pixels", size, 0) not in baselines_done:
            baselines_done.add(("pixels", size, 0))
            pix = fit_pixels(pixels[size])
            methods.append(measure(f"pixels {size}px", "pixels", size, pix, baseline_for=spec.name))
        if ("pca", size, dim) not in baselines_done:
            baselines_done.add(("pca", size, dim))
            pca = fit_pca(pixels[size], dim, seed)
            methods.append(measure(f"pca-{dim} {size}px", "pca", size, pca, baseline_for=spec.name))
    if not encoders:
        size = sizes[0]
        methods.append(measure(f"pixels {size}px", "pixels", size, fit_pixels(pixels[size])))
        methods.append(measure(f"pca-128 {size}px", "pca", size, fit_pca(pixels[size], 128, seed)))
    return EvaluationReport(
        folder=os.fspath(folder),
        images=len(corpus),
        labels=len(set(corpus.labels)),
        label_source=corpus.label_source,
        seed=seed,
        methods=methods,
        seconds=round(time.perf_counter() - t_start, 1),
    )


def _skip(work_dir: str | os.PathLike | None) -> tuple[str, ...]:
    return (os.fspath(Path(work_dir).resolve()),) if work_dir else ()


def _subset_folder(corpus: LabelledFolder, work_dir: Path) -> Path:
    """A folder of symlinks to the sampled images (same relative paths), for training on the subset."""
    root = work_dir / "subset"
    for p in corpus.paths:
        link = root / p.relative_to(corpus.root)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(p.resolve(), link)
    return root


# ---------------------------------------------------------------- outputs


def ratios(report: EvaluationReport, metric: str = "map_at_10") -> dict[str, dict[str, float]]:
    """Each model's `metric` over its own pixel and PCA baselines."""
    out = {}
    for m in report.methods:
        if m.kind != "model":
            continue
        pix = next(b for b in report.methods if b.kind == "pixels" and b.image_size == m.image_size)
        pca = next(b for b in report.methods if b.kind == "pca" and b.name == f"pca-{m.dim} {m.image_size}px")
        out[m.name] = {
            "vs_pixels": m.metrics[metric] / max(pix.metrics[metric], 1e-12),
            "vs_pca": m.metrics[metric] / max(pca.metrics[metric], 1e-12),
        }
    return out


def to_markdown(report: EvaluationReport) -> str:
    """One row per method: retrieval metrics, near-duplicate recall, ratios to the baselines."""
    rel = ratios(report)
    lines = [
        "| method | size | dim | P@1 | P@10 | mAP@10 | x pixels | x PCA | near-dup R@1 | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.methods:
        r = rel.get(m.name)
        dup = m.near_duplicate_recall_at_1
        cells = [
            m.name,
            str(m.image_size),
            str(m.dim),
            f"{m.metrics['precision_at_1']:.3f}",
            f"{m.metrics['precision_at_10']:.3f}",
            f"{m.metrics['map_at_10']:.3f}",
            f"{r['vs_pixels']:.2f}" if r else "",
            f"{r['vs_pca']:.2f}" if r else "",
            f"{dup['mean']:.3f}" if dup else "",
            f"{m.train_seconds:.0f}" if m.train_seconds else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_bar_chart(report: EvaluationReport, path: str | os.PathLike) -> None:
    """mAP@10 and precision@1 per method, baselines in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in report.methods]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4.5), dpi=100)
    colours = ["#888888" if m.kind != "model" else "#2b6cb0" for m in report.methods]
    ax.bar(x - 0.2, [m.metrics["map_at_10"] for m in report.methods], 0.4, color=colours, label="mAP@10")
    ax.bar(
        x + 0.2,
        [m.metrics["precision_at_1"] for m in report.methods],
        0.4,
        color=colours,
        alpha=0.5,
        label="precision@1",
    )
    ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(f"retrieval on {Path(report.folder).name} ({report.images} images, {report.labels} labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: EvaluationReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": out / "report.png"}
    paths["json"].write_text(json.dumps({**report.to_dict(), "ratios": ratios(report)}, indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(report))
    save_bar_chart(report, paths["chart"])
    return paths
