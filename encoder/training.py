"""Training: a folder of images in, a model directory out.

Read top to bottom: find images -> decode each once into a uint8 cache ->
split train/validation -> epochs of AdamW with warm-up + cosine schedule,
validation, a checkpoint each epoch and early stopping -> pictures and a log.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import variants  # noqa: F401  (importing it registers every model kind)
from .atomic import atomic_write_json
from .augment import AUGMENTS, augment_batch
from .base import load_start_weights, resolve_init, start_config, start_record
from .checkpoint import save_model
from .config import ModelConfig
from .decoding import decode_to_array
from .device import conv_layout, pick_device
from .errors import ConfigError, TrainError
from .image_files import find_images
from .model import Autoencoder
from .plots import image_grid, save_loss_curve, to_uint8_images
from .registry import create_model
from .resume import load_resume_state, save_resume_state
from .search_vector import fit_search_vector, resolve_pooling
from .siamese import Projector, vicreg_loss
from .train_config import TrainConfig, TrainResult, planned_steps

log = logging.getLogger(__name__)

RESUME_DIR = "checkpoint"  # last epoch's model + optimizer, for --resume
TRAIN_LOG = "train_log.json"  # written last: its presence means the training finished


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def folder_labels(paths: list[Path], root: Path) -> tuple[list[str], np.ndarray]:
    """Label = the image's folder relative to the root ('' for the root itself)."""
    names = [str(p.parent.relative_to(root)).replace(os.sep, "/") if p.parent != root else "" for p in paths]
    classes = sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, np.array([lookup[n] for n in names], dtype=np.int64)


# ---------------------------------------------------------------- train: the recipe, in stages


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    skip_dirs: tuple[str, ...] = (),
) -> TrainResult:
    """Train an autoencoder on every image under `folder`; write the model and pictures into `out`.

    The stages, in order:

    1. :func:`_load_data`: find the images, decode each once into a uint8 cache, split
       train/validation.
    2. :func:`_start_run`: the model, the optimiser, the epoch budget and the learning-rate
       schedule; :func:`_resume_run` restores a stopped run's state (``resume=True``).
    3. :func:`_run_epochs`: each epoch :meth:`_Run.train_epoch` (the steps), then
       :meth:`_Run.end_epoch`: validation, the best model saved, history, the resume state
       (:meth:`_Run.save_resume_state`), early stopping.
    4. :func:`_write_outputs`: the loss curve, reconstructions and ``train_log.json``.
    """
    cfg = config or TrainConfig()
    start_from = resolve_init(cfg.init_from, model_config)
    mcfg = start_config(model_config, start_from)
    root = Path(folder)
    out_dir = Path(out)
    if not root.is_dir():
        raise TrainError(f"{root}: not a folder")
    if not (cfg.siamese >= 0 and math.isfinite(cfg.siamese)):
        raise ConfigError(f"siamese weight must be a finite number >= 0, not {cfg.siamese}")
    if cfg.augment not in AUGMENTS:  # before any decoding, not at the first batch
        raise ConfigError(f"unknown augment mode {cfg.augment!r}: {', '.join(AUGMENTS)}")
    if cfg.siamese > 0 and cfg.augment == "none":
        raise ConfigError("the siamese term compares two augmented views: it needs an augmentation, not 'none'")
    resolve_pooling(cfg.pooling, create_model(mcfg))  # an impossible pooling fails before training
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)

    data = _load_data(root, out_dir, mcfg, cfg, device, skip_dirs)
    if mcfg.kind == "cvae":  # its labels are the folders
        mcfg = dataclasses.replace(mcfg, labels=tuple(data.classes))
    run = _start_run(mcfg, cfg, data, device)
    if start_from is not None:
        load_start_weights(run.model, start_from)
        run.started_from = start_record(start_from)
    if resume:
        _resume_run(run, out_dir / RESUME_DIR)
    _run_epochs(run, out_dir, progress)

    result = run.result(out_dir)
    show_idx = data.val_idx if len(data.val_idx) else data.train_idx
    _write_outputs(result, run.cfg, mcfg, data.cache, show_idx, device, data.decode_s)
    return result


# ---------------------------------------------------------------- 1. data


@dataclass
class _Data:
    """The training images, decoded once, and their train/validation split."""

    root: Path
    cache: torch.Tensor  # (N, 3, S, S) uint8, on the GPU when it fits
    labels: torch.Tensor  # (N,) int64 folder ids
    classes: list[str]  # folder names, by id
    failed: list[tuple[Path, str]]  # files that did not decode, and why
    decode_s: float
    train_idx: np.ndarray
    val_idx: np.ndarray  # empty for fewer than 10 images

    @property
    def n(self) -> int:
        return len(self.cache)


def _load_data(
    root: Path, out_dir: Path, mcfg: ModelConfig, cfg: TrainConfig, device: torch.device, skip_dirs: tuple[str, ...]
) -> _Data:
    paths = find_images(root, skip_dirs=(str(out_dir), *skip_dirs))
    if cfg.max_images:
        paths = paths[: cfg.max_images]
    t0 = time.perf_counter()
    pixels, ok_paths, failed = decode_to_array(paths, mcfg.image_size, workers=cfg.workers, max_pixels=cfg.max_pixels)
    for p, why in failed:
        log.warning("skipped %s: %s", p, why)
    if len(ok_paths) < 2:
        raise TrainError(f"{root}: found {len(ok_paths)} decodable images, need at least 2 to train")
    decode_s = time.perf_counter() - t0
    classes, label_ids = folder_labels(ok_paths, root)

    # The cache: decoded once, uint8 (a quarter of float32's size), on the GPU when it fits.
    cache = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    labels = torch.from_numpy(label_ids)
    if device.type == "cuda" and cache.numel() < 0.4 * torch.cuda.mem_get_info(device)[0]:
        cache, labels = cache.to(device), labels.to(device)
    elif device.type == "cuda":
        cache = cache.pin_memory()

    n = len(ok_paths)
    order = np.random.default_rng(cfg.seed).permutation(n)
    n_val = 0 if n < 10 else max(1, int(round(n * cfg.val_fraction)))
    return _Data(root, cache, labels, classes, failed, decode_s, train_idx=order[n_val:], val_idx=order[:n_val])


# ---------------------------------------------------------------- 2. model, optimiser, budget; resume


@dataclass
class _Run:
    """One training run: its moving parts, and the state that a checkpoint saves and a resume restores."""

    cfg: TrainConfig  # with `epochs` decided
    data: _Data
    device: torch.device
    model: Autoencoder
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator  # augmentation draws
    steps_per_epoch: int
    start_epoch: int = 0
    epochs_run: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    stale: int = 0  # epochs since validation last improved
    history: list[dict[str, Any]] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)  # the last step's loss parts
    seen_total: int = 0
    train_time_total: float = 0.0
    projector: torch.nn.Module | None = None  # the siamese term's (training only, not saved)
    started_from: dict[str, str] | None = None  # :func:`.base.start_record`, kept in the model's metadata

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S) float in [0, 1] and their label ids (B,), on the device."""
        i = torch.from_numpy(idx).to(self.data.cache.device)
        x = self.data.cache[i].to(self.device, non_blocking=True).float().div_(255.0)
        x = x.contiguous(memory_format=conv_layout(self.device))
        return x, self.data.labels[i].to(self.device, non_blocking=True)

    def evaluate(self, idx: np.ndarray) -> float:
        self.model.eval()
        total = 0.0
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            for s in range(0, len(idx), 256):
                x, y = self.batch(idx[s : s + 256])
                loss, _, _ = self.model.training_loss(x, x, y)
                total += float(loss) * len(x)
        return total / max(1, len(idx))

    def train_epoch(self, epoch: int, perm: np.ndarray, bar: Any) -> tuple[float, int, float]:
        """One pass over `perm`; returns (mean training loss, images seen, seconds)."""
        cfg, model = self.cfg, self.model
        model.train()
        t_epoch = time.perf_counter()
        running, seen = 0.0, 0
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = self.batch(idx)
            inp, target = augment_batch(x, cfg.augment, self.gen)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
                loss, self.parts, _ = model.training_loss(inp, target, y)
                if self.projector is not None:
                    other, _ = augment_batch(x, cfg.augment, self.gen)  # a second view of the same images
                    z1, z2 = self.projector(model.encode(inp)), self.projector(model.encode(other))
                    term, parts = vicreg_loss(z1, z2)
                    loss = loss + cfg.siamese * term
                    self.parts = {**self.parts, **parts}
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            self.opt.step()
            self.sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            if bar is not None:
                rate = seen / max(1e-9, time.perf_counter() - t_epoch)
                bar.set_postfix(epoch=epoch + 1, loss=f"{running / seen:.4f}", img_s=f"{rate:.0f}")
                bar.update(1)
        if self.cuda:
            torch.cuda.synchronize()
        return running / max(1, seen), seen, time.perf_counter() - t_epoch

    def end_epoch(self, epoch: int, train_loss: float, seen: int, seconds: float, out_dir: Path) -> bool:
        """Validate, save the model if it is the best yet, log, save the resume state.

        Returns True when the run should stop early."""
        self.seen_total += seen
        self.train_time_total += seconds
        val_loss = self.evaluate(self.data.val_idx) if len(self.data.val_idx) else None
        score = val_loss if val_loss is not None else train_loss
        if score < self.best_val - 1e-6:
            self.best_val, self.best_epoch, self.stale = score, epoch + 1, 0
            meta = _meta(self.cfg, self.data.root, self.data.n, epoch + 1, score, self.started_from)
            save_model(self.model, out_dir, meta=meta)
        else:
            self.stale += 1
        self.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": self.opt.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "images_per_second": round(seen / max(seconds, 1e-9), 1),
                **{k: v for k, v in self.parts.items() if k != "mse"},
            }
        )
        self.epochs_run = epoch + 1
        self.save_resume_state(out_dir / RESUME_DIR, epoch + 1)
        return self.stale >= self.cfg.patience

    def save_resume_state(self, path: Path, epoch: int) -> None:
        state = {
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "stale": self.stale,
            "history": self.history,
            "gen_state": self.gen.get_state().tolist(),
        }
        save_resume_state(path, self.model, self.opt, state)

    def result(self, out_dir: Path) -> TrainResult:
        return TrainResult(
            out=out_dir,
            epochs_run=self.epochs_run,
            best_epoch=self.best_epoch,
            best_val_loss=self.best_val,
            images=self.data.n,
            skipped=[(str(p), why) for p, why in self.data.failed],
            history=self.history,
            images_per_second=self.seen_total / self.train_time_total if self.train_time_total else 0.0,
        )


def _start_run(mcfg: ModelConfig, cfg: TrainConfig, data: _Data, device: torch.device) -> _Run:
    """The model and AdamW; the epoch budget (:func:`planned_steps` unless `epochs` is set); warm-up + cosine."""
    model = create_model(mcfg).to(device, memory_format=conv_layout(device))
    # The siamese term's projector trains with the model; on --resume it starts afresh.
    projector = Projector(model.embedding_dim).to(device) if cfg.siamese > 0 else None
    params = [*model.parameters(), *(projector.parameters() if projector is not None else ())]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data.train_idx) / cfg.batch_size))
    planned = planned_steps(len(data.train_idx), cfg.min_steps)
    epochs = cfg.epochs or min(300, max(2, math.ceil(planned / steps_per_epoch)))
    cfg = dataclasses.replace(cfg, epochs=epochs)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, cfg.warmup_epochs * steps_per_epoch, total_steps)
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    return _Run(cfg, data, device, model, opt, sched, gen, steps_per_epoch, projector=projector)


def _resume_run(run: _Run, resume_dir: Path) -> None:
    """Continue from the last finished epoch saved in `resume_dir`, if there is one."""
    if not (resume_dir / "state.json").exists():
        return
    st = load_resume_state(resume_dir, run.model, run.opt)
    run.start_epoch = run.epochs_run = st["epoch"]
    run.best_val, run.best_epoch, run.stale = st["best_val"], st["best_epoch"], st["stale"]
    run.history = st["history"]
    run.sched.last_epoch = run.start_epoch * run.steps_per_epoch - 1
    with warnings.catch_warnings():  # "scheduler stepped before optimizer": intended here
        warnings.simplefilter("ignore", UserWarning)
        run.sched.step()
    if "gen_state" in st:
        run.gen.set_state(torch.tensor(st["gen_state"], dtype=torch.uint8))
    log.info("resumed at epoch %d", run.start_epoch)


# ---------------------------------------------------------------- 3. the epochs


def _run_epochs(run: _Run, out_dir: Path, progress: bool) -> None:
    """Epochs from `run.start_epoch` until the budget is spent or validation stops improving."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total_steps = run.cfg.epochs * run.steps_per_epoch
        initial = run.start_epoch * run.steps_per_epoch
        bar = tqdm(total=total_steps, initial=initial, unit="batch", dynamic_ncols=True)
    shuffle = np.random.default_rng(run.cfg.seed + 1)
    for _ in range(run.start_epoch):
        shuffle.permutation(run.data.train_idx)  # keep the shuffle stream aligned on resume
    for epoch in range(run.start_epoch, run.cfg.epochs):
        train_loss, seen, seconds = run.train_epoch(epoch, shuffle.permutation(run.data.train_idx), bar)
        if run.end_epoch(epoch, train_loss, seen, seconds, out_dir):
            log.info("early stop at epoch %d (best %d)", epoch + 1, run.best_epoch)
            if bar is not None:  # the run is complete: the bar says so, not "60%"
                bar.total = bar.n
                bar.refresh()
            break
    if bar is not None:
        bar.close()


# ---------------------------------------------------------------- 4. outputs


def _meta(cfg: TrainConfig, root: Path, n: int, epoch: int, val: float, start: dict[str, str] | None) -> dict[str, Any]:
    return {
        "trained_on": str(root.resolve()),
        "started_from": start,
        "images": n,
        "epoch": epoch,
        "val_loss": val,
        "train": dataclasses.asdict(cfg),
    }


def _write_outputs(
    result: TrainResult,
    cfg: TrainConfig,
    mcfg: ModelConfig,
    cache: torch.Tensor,
    show_idx: np.ndarray,
    device: torch.device,
    decode_s: float,
) -> None:
    from .checkpoint import load_model

    out = result.out
    save_loss_curve(result.history, out / "loss.png", title=f"{mcfg.kind} autoencoder")
    best = load_model(out, device)
    fit_search_vector(best, cache, device, out, calibration=cfg.calibration, pooling=cfg.pooling)
    idx = torch.from_numpy(np.sort(show_idx)[:8]).to(cache.device)
    x = cache[idx].to(device).float().div(255.0)
    with torch.no_grad():
        recon = best.reconstruct(x, None)
    image_grid([to_uint8_images(x), to_uint8_images(recon)], labels=["input", "output"]).save(
        out / "reconstructions.png"
    )
    atomic_write_json(
        out / TRAIN_LOG,
        {
            "device": str(device),
            "images": result.images,
            "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "decode_seconds": round(decode_s, 3),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "train_images_per_second": round(result.images_per_second, 1),
            "train": dataclasses.asdict(cfg),
            "model": mcfg.to_dict(),
            "history": result.history,
        },
    )
