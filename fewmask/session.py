"""The default session: one registry per process, loaded on first use, for convenience.

The core (config resolution, factory, Trainer) always takes a registry explicitly. These
wrappers, re-exported at the package root, fill it in with the session's registry, so that
``fewmask.create("masker", "metaticket")`` works in a notebook. A program that wants another set
of plugins makes its own with :func:`fewmask.plugins.load_registry` and passes ``registry=``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fewmask import factory
from fewmask.config import ExperimentConfig
from fewmask.plugins import load_registry
from fewmask.registry import Registry
from fewmask.resolve import ResolvedConfig
from fewmask.trainer import Trainer

ConfigLike = ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path


class _Session:
    registry: Registry | None = None


def default_registry() -> Registry:
    """This process's registry: built-ins plus every plugin selected by the environment."""
    if _Session.registry is None:
        _Session.registry = load_registry()
    return _Session.registry


def reset_default_registry() -> None:
    """Forget the session's registry; the next use reloads the plugins (tests, notebooks)."""
    _Session.registry = None


def create(
    kind: str, name: str, options: Any = None, registry: Registry | None = None, **kwargs: Any
) -> Any:
    """:func:`fewmask.factory.create` over the session's registry (``kind`` may be the config
    field, e.g. ``inner``, or the registry kind, ``inner_optimizer``)."""
    return factory.create(kind, name, options, registry=registry or default_registry(), **kwargs)


def load_config(
    path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None
) -> ResolvedConfig:
    """Read, override, validate and resolve a config file."""
    return factory.load_config(path, overrides, registry=registry or default_registry())


def resolve(
    config: ConfigLike, overrides: Iterable[str] = (), registry: Registry | None = None
) -> ResolvedConfig:
    """Validate any form of config (file, dict, ExperimentConfig) and resolve its components."""
    return factory.resolve(config, overrides, registry=registry or default_registry())


def build_trainer(
    config: ConfigLike, overrides: Iterable[str] = (), registry: Registry | None = None
) -> Trainer:
    """Validate the whole config, then build the data, the components and the Trainer."""
    return factory.build_trainer(config, overrides, registry=registry or default_registry())


def list_components(kind: str | None = None, registry: Registry | None = None) -> list[str]:
    """Registered names of one kind (config field names accepted), or ``kind:name`` for all."""
    registry = registry or default_registry()
    if kind is None:
        return [f"{info.kind}:{info.name}" for info in registry.list()]
    return registry.names(factory.component_kind(kind, registry))
