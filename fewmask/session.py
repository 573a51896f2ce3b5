"""The host: finding plugins and filling a registry, and the process's default session.

Plugins are entry points in the group ``fewmask`` (as in pluggy's eggsample, the host registers
fewmask's own components as an ordinary plugin first). Environment switches (read when no
explicit argument is given):

- ``FEWMASK_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point except those named in
  ``FEWMASK_LOAD_PLUGINS``.
- ``FEWMASK_LOAD_PLUGINS=a,b``: load these entry points even when autoload is off.
- ``FEWMASK_DISABLE_PLUGINS=a,b``: never load these entry points.
- ``FEWMASK_STRICT_PLUGINS=1``: a plugin that fails to load raises instead of warning.

The core (config resolution, factory, Trainer) always takes a registry explicitly. The session
wrappers below, re-exported at the package root, fill it in with the process's registry, so that
``fewmask.create("masker", "metaticket")`` works in a notebook. A program that wants another set
of plugins makes its own with :func:`load_registry` and passes ``registry=``.
"""

from __future__ import annotations

import importlib.metadata
import os
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

from fewmask import factory
from fewmask.config import ExperimentConfig
from fewmask.config.resolve import ResolvedConfig
from fewmask.errors import PluginLoadError
from fewmask.factory import RunResults
from fewmask.registry import PluginFailure, Provider, Registry, hookspecs
from fewmask.training.trainer import Trainer

ENTRY_POINT_GROUP = "fewmask"


class PluginLoadWarning(UserWarning):
    """A plugin failed to import or register and was skipped."""


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _builtin_provider() -> Provider:
    from fewmask.version import __version__

    return Provider("builtins", "fewmask", __version__)


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _distribution_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown distribution", "?")
    return (dist.metadata["Name"] or "unknown distribution", dist.version or "?")


def _record_failure(
    failures: list[PluginFailure],
    ep_name: str,
    dist: tuple[str, str],
    exc: BaseException,
    strict: bool,
) -> None:
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    failure = PluginFailure(ep_name, dist[0], dist[1], detail)
    if strict:
        raise PluginLoadError(str(failure)) from exc
    failures.append(failure)
    warnings.warn(str(failure), PluginLoadWarning, stacklevel=3)


def get_plugin_manager(
    autoload: bool | None = None,
    only: Iterable[str] | None = None,
    blocked: Iterable[str] | None = None,
    strict: bool | None = None,
) -> tuple[pluggy.PluginManager, dict[str, Provider], list[PluginFailure]]:
    """A fresh plugin manager with the built-ins and the selected entry points loaded.

    Returns the manager, the provider of each registered plugin name, and the plugins that failed.
    """
    autoload = not _env_flag("FEWMASK_DISABLE_PLUGIN_AUTOLOAD") if autoload is None else autoload
    only = _env_list("FEWMASK_LOAD_PLUGINS") if only is None else set(only)
    blocked = _env_list("FEWMASK_DISABLE_PLUGINS") if blocked is None else set(blocked)
    strict = _env_flag("FEWMASK_STRICT_PLUGINS") if strict is None else strict

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    from fewmask import builtins

    pm.register(builtins, name="builtins")
    providers = {"builtins": _builtin_provider()}
    failures: list[PluginFailure] = []
    seen: set[str] = set()
    for ep in _entry_points():
        if ep.name in blocked or ep.name in seen or not (autoload or ep.name in only):
            continue
        seen.add(ep.name)
        dist = _distribution_of(ep)
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            _record_failure(failures, ep.name, dist, exc, strict)
            continue
        providers[ep.name] = Provider(ep.name, *dist)
    pm.check_pending()
    return pm, providers, failures


def load_registry(
    autoload: bool | None = None,
    only: Iterable[str] | None = None,
    blocked: Iterable[str] | None = None,
    strict: bool | None = None,
) -> Registry:
    """A registry filled by the built-ins and every selected plugin, with provenance recorded."""
    pm, providers, failures = get_plugin_manager(autoload, only, blocked, strict)
    registry = Registry()
    registry.failures.extend(failures)
    for impl in pm.hook.fewmask_register.get_hookimpls():  # registration order
        provider = providers[impl.plugin_name]
        try:
            impl.function(registry=registry.scoped(provider))
        except (TypeError, ValueError, ImportError, AttributeError) as exc:
            strict_mode = _env_flag("FEWMASK_STRICT_PLUGINS") if strict is None else strict
            _record_failure(
                registry.failures,
                provider.plugin,
                (provider.distribution, provider.version),
                exc,
                strict_mode,
            )
    return registry


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


def train(
    config: ConfigLike | None,
    run_dir: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    start: str = "new",
    callbacks: Sequence[Callable[[Trainer], None]] = (),
    registry: Registry | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunResults:
    """Run this config in this folder, resumably (:func:`fewmask.factory.train`): what
    ``fewmask train`` does, as one call. ``start``: ``new``, ``force``, ``resume`` or ``auto``."""
    return factory.train(
        config,
        run_dir,
        overrides=overrides,
        start=start,
        callbacks=callbacks,
        registry=registry or default_registry(),
        echo=echo,
    )
