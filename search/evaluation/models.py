"""The models to evaluate: parsed from the command line, trained on the folder when given as a kind."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder import ConfigError, ModelConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """A model to evaluate: a trained model directory, or a kind to train on the folder first."""

    name: str
    model_dir: Path | None = None
    kind: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainedModel:
    """A spec with the directory its model is in; `train_seconds` is None when it was given trained."""

    spec: ModelSpec
    model_dir: Path
    train_seconds: float | None


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
            raise ConfigError(f"bad model option {item!r} in {arg!r}; expected key=value")
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


def train_models(
    specs: Sequence[ModelSpec],
    folder: Path,
    work_dir: Path,
    model_defaults: dict[str, Any],
    train_defaults: dict[str, Any],
) -> list[TrainedModel]:
    """Train each spec that names a kind (timed); a spec with a model directory is taken as it is."""
    trained: list[TrainedModel] = []
    for spec in specs:
        if spec.model_dir is not None:
            trained.append(TrainedModel(spec, spec.model_dir, None))
            continue
        t0 = time.perf_counter()
        out = train_spec(spec, folder, work_dir, model_defaults, train_defaults)
        trained.append(TrainedModel(spec, out, time.perf_counter() - t0))
    return trained
