"""The model registry: every kind of autoencoder by name, and one way to make one.

A model file registers its classes with ``@register("name")`` as it is imported;
this module imports no model file, so the base class never imports its variants
back (timm's ``_registry.py``). The table is complete once ``encoder.model`` and
``encoder.variants`` are imported: ``encoder.create_model`` and
``encoder.list_models`` (the package's names) import them first, and modules in
``encoder`` that build models by name import ``variants`` themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .model import Autoencoder

_REGISTRY: dict[str, Callable[[ModelConfig], Autoencoder]] = {}


def register(name: str) -> Callable[[type[Autoencoder]], type[Autoencoder]]:
    """Class decorator: make a variant constructible by name."""

    def wrap(cls: type[Autoencoder]) -> type[Autoencoder]:
        _REGISTRY[name] = cls
        return cls

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The first line of a registered kind's docstring: what it is, in a line."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model kind {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    doc = getattr(_REGISTRY[name], "__doc__", None) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def create_model(name_or_config: str | ModelConfig, **overrides: Any) -> Autoencoder:
    """Build a model by registry name (with config overrides) or from a full config."""
    if isinstance(name_or_config, ModelConfig):
        cfg = dataclasses.replace(name_or_config, **overrides)
    else:
        cfg = ModelConfig(kind=name_or_config, **overrides)
    if cfg.kind not in _REGISTRY:
        raise ConfigError(f"unknown model kind {cfg.kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.kind](cfg)


__all__ = ["create_model", "list_models", "register"]
