"""Which model makes an index's vectors: given, kept, or trained on the folder first.

The model lives inside the index directory (``model/``), so copying the index copies
the model that made its vectors.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from encoder import Encoder, ModelConfig, TrainConfig, model_id, train
from encoder.atomic import fsync_dir
from encoder.checkpoint import CONFIG, WEIGHTS, read_config
from encoder.errors import LookalikeError
from encoder.training import RESUME_DIR, TRAIN_LOG

from .layout import MODEL_DIR, MODEL_INCOMING, MODEL_OLD, SEGMENT_LIST, SEGMENTS, STORE

log = logging.getLogger(__name__)


class IndexBuildError(LookalikeError):
    """The index cannot be built as asked (locked, model mismatch, bad folder...)."""


class IndexLockedError(IndexBuildError):
    """Another writer holds the index (a second `lookalike index`, `dedupe --apply`): try later."""


@dataclass
class ModelChoice:
    encoder: Encoder
    reembed: bool  # every image must be embedded again (the model changed)
    trained_s: float | None  # seconds spent training it first, None when none was trained


def prepare_model(
    root: Path,
    idx: Path,
    model_dir: str | os.PathLike | None,
    reembed: bool,
    model_config: ModelConfig | None,
    train_config: TrainConfig | None,
    device: str | None,
) -> ModelChoice:
    """Decide which model makes the vectors of index `idx`: the one given (installed into the
    index), the one already there, or one trained (or finished training) on `root`."""
    inside = idx / MODEL_DIR
    trained_s: float | None = None
    has_vectors = (idx / STORE).exists() or (idx / SEGMENTS / SEGMENT_LIST).exists()  # published, or checkpointed
    if model_dir is not None:
        src = Path(model_dir).resolve()
        if not _is_model_dir(src):
            raise IndexBuildError(f"{model_dir}: not a model directory (needs {WEIGHTS} and {CONFIG})")
        if src != inside.resolve():
            new_id = model_id(src)
            old_id = model_id(inside) if _is_model_dir(inside) else None
            if old_id is not None and old_id != new_id and has_vectors and not reembed:
                raise IndexBuildError(
                    f"{idx} holds vectors made by model {old_id}, and --model is a different model ({new_id}); "
                    "pass --reembed to re-embed every image with the new model"
                )
            if old_id != new_id:
                _install_model(src, idx)
                reembed = reembed or (old_id is not None and has_vectors)
    elif not _is_model_dir(inside) or _training_unfinished(inside):
        unfinished = _is_model_dir(inside)
        if unfinished:
            # A run killed while training leaves the best epoch so far: finish the training
            # rather than index with a half-trained model.
            log.info("the training of %s was interrupted: resuming it", inside)
        else:
            log.info("no model in %s: training one on %s first", idx, root)
        t0 = time.perf_counter()
        train(
            root,
            inside,
            model_config or _saved_config(inside) or ModelConfig(),
            train_config or TrainConfig(device=device),
            skip_dirs=(str(idx),),
            resume=unfinished,
        )
        trained_s = round(time.perf_counter() - t0, 3)
    return ModelChoice(Encoder(inside, device=device), reembed, trained_s)


def _install_model(src: Path, idx: Path) -> None:
    """Copy a model directory into the index (so copying the index copies its model).

    The files are copied (and fsynced) into a folder beside it, which two renames then swap in;
    the index directory is fsynced so that the swap is durable."""
    tmp, old, dst = idx / MODEL_INCOMING, idx / MODEL_OLD, idx / MODEL_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in os.listdir(src):
        if (src / name).is_file():
            shutil.copy2(src / name, tmp / name)
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    fsync_dir(idx)
    shutil.rmtree(old, ignore_errors=True)


def _is_model_dir(d: Path) -> bool:
    return (d / WEIGHTS).is_file() and (d / CONFIG).is_file()


def _training_unfinished(d: Path) -> bool:
    """True for a model directory left by a training run that was killed: it holds the
    resume state of an epoch but not the log that training writes last."""
    return (d / RESUME_DIR / "state.json").is_file() and not (d / TRAIN_LOG).is_file()


def _saved_config(d: Path) -> ModelConfig | None:
    try:
        return read_config(d)[0]
    except Exception:  # unreadable: train afresh with the defaults
        return None
