"""A training run's state for --resume: the last epoch's model, the optimiser's state as
safetensors (never a pickle) and the loop's counters as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_write_json, atomic_write_via
from .checkpoint import save_model
from .errors import TrainError
from .model import Autoencoder


def save_resume_state(path: Path, model: Autoencoder, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    opt_state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    atomic_write_via(path / "optimizer.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write_json(path / "state.json", {**state, "param_groups": opt_state["param_groups"]})


def load_resume_state(path: Path, model: Autoencoder, opt: torch.optim.Optimizer) -> dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        flat = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot resume from {path}: {exc}") from None
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in flat.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state
