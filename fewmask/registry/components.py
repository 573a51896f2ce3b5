"""The component registry: names -> (class, config class, provider), filled by plugins.

A :class:`Registry` is a plain object: :func:`fewmask.session.load_registry` makes one per
session and hands each plugin's ``fewmask_register`` hook a :class:`ScopedRegistry` view of it.
There is no registry at module level; building components from it is :mod:`fewmask.factory`'s.
"""

from __future__ import annotations

from typing import Any

import attrs

from fewmask.errors import DuplicateComponentError, UnknownComponentError, closest_name
from fewmask.interfaces import COMPONENT_KINDS
from fewmask.registry.known import install_hint


@attrs.frozen
class Provider:
    """Who registered a component: the plugin's entry-point name, distribution and version."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"


@attrs.frozen
class PluginFailure:
    """A plugin that failed to import or register, kept so later errors can mention it."""

    plugin: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return (
            f"plugin '{self.plugin}' ({self.distribution} {self.version}) failed to load: "
            f"{self.error}; disable it with FEWMASK_DISABLE_PLUGINS={self.plugin}"
        )


@attrs.frozen
class ComponentInfo:
    """One registered component."""

    kind: str
    name: str
    cls: type
    config_cls: type | None
    description: str
    provider: Provider

    def build(self, config: Any, **kwargs: Any) -> Any:
        """The component: ``cls(config, **kwargs)``, or ``cls(**kwargs)`` if it takes no config."""
        return self.cls(config, **kwargs) if self.config_cls is not None else self.cls(**kwargs)


def _check_component(kind: str, name: str, cls: Any) -> None:
    base = COMPONENT_KINDS[kind]
    if not name or not isinstance(name, str) or name != name.strip():
        raise ValueError(f"{kind} name must be a non-empty string without spaces, got {name!r}")
    if not isinstance(cls, type):
        hint = " (pass the class, not an instance: drop the '()')" if isinstance(cls, base) else ""
        raise TypeError(f"{kind} '{name}' must be a class deriving from {base.__name__}{hint}")
    if not issubclass(cls, base):
        raise TypeError(
            f"{kind} '{name}': {cls.__module__}.{cls.__qualname__} does not derive from "
            f"fewmask.{base.__name__}"
        )


def _declared(
    kind: str, name: str, cls: type, config: type | None, description: str | None
) -> tuple[type | None, str]:
    """``config`` and ``description``, each defaulting to the class attribute of that role
    (``cls.config_class``, ``cls.description``); no options and no description without one."""
    if config is None:
        config = getattr(cls, "config_class", None)
    if description is None:
        description = getattr(cls, "description", "")
    if config is not None and not attrs.has(config):
        raise TypeError(f"{kind} '{name}': config must be an attrs class, got {config!r}")
    if not isinstance(description, str):
        raise TypeError(f"{kind} '{name}': description must be a string, got {description!r}")
    return config, description


class Registry:
    """All registered components by kind and name; see :func:`fewmask.session.load_registry`."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, ComponentInfo]] = {k: {} for k in COMPONENT_KINDS}
        self.failures: list[PluginFailure] = []

    def add(
        self,
        kind: str,
        name: str,
        cls: type,
        *,
        provider: Provider,
        config: type | None = None,
        description: str | None = None,
    ) -> ComponentInfo:
        """Register ``cls`` under ``name``; a name already taken raises, naming both providers.

        ``config`` (the attrs class of its options) and ``description`` (one line) default to
        the class attributes ``cls.config_class`` and ``cls.description``.
        """
        if kind not in COMPONENT_KINDS:
            raise ValueError(
                f"unknown component kind {kind!r}; kinds: {', '.join(COMPONENT_KINDS)}"
            )
        _check_component(kind, name, cls)
        config, description = _declared(kind, name, cls, config, description)
        if name in self._entries[kind]:
            first = self._entries[kind][name].provider
            raise DuplicateComponentError(
                f"{kind} '{name}' is registered by both {first} and {provider}"
            )
        info = ComponentInfo(kind, name, cls, config, description, provider)
        self._entries[kind][name] = info
        return info

    def scoped(self, provider: Provider) -> ScopedRegistry:
        """A view whose ``add_*`` methods record ``provider``; plugins receive one of these."""
        return ScopedRegistry(self, provider)

    def get(self, kind: str, name: str) -> ComponentInfo:
        """The component, or an :class:`UnknownComponentError` with suggestions."""
        entries = self._entries[kind]
        if name in entries:
            return entries[name]
        raise UnknownComponentError(self.unknown_message(kind, name))

    def unknown_message(self, kind: str, name: str) -> str:
        """Why ``name`` is not a known ``kind``: suggestion, available names, failed plugins."""
        available = sorted(self._entries[kind])
        msg = f"no {kind} named {name!r}."
        hint = install_hint(kind, name)
        close = closest_name(name, available)
        if hint:
            msg += f" {hint}"
        elif close:
            msg += f" Did you mean {close!r}?"
        msg += f" Available: {', '.join(available) or '(none)'}."
        for failure in self.failures:
            msg += f" Note: {failure}."
        return msg

    def kinds(self) -> list[str]:
        """Every kind of component, in the order of :data:`fewmask.interfaces.COMPONENT_KINDS`."""
        return list(self._entries)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def list(self, kind: str | None = None) -> list[ComponentInfo]:
        """Every component (of one kind, if given), sorted by kind then name."""
        kinds = [kind] if kind else list(COMPONENT_KINDS)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]


def _adder(kind: str):
    """The method ``ScopedRegistry.add_<kind>``."""

    def add(self: ScopedRegistry, name: str, cls: type, *, config=None, description=None) -> None:
        self._registry.add(
            kind, name, cls, provider=self.provider, config=config, description=description
        )

    add.__name__ = f"add_{kind}"
    add.__qualname__ = f"ScopedRegistry.add_{kind}"
    add.__doc__ = (
        f"Register the {kind} class ``cls`` as ``name``; ``config`` and ``description`` default "
        "to ``cls.config_class`` and ``cls.description``."
    )
    return add


class ScopedRegistry:
    """Handed to ``fewmask_register``: ``add_<kind>(name, cls)``, with ``config=`` and
    ``description=`` when the class does not declare ``config_class`` and ``description``."""

    def __init__(self, registry: Registry, provider: Provider):
        self._registry = registry
        self.provider = provider

    add_backbone = _adder("backbone")
    add_masker = _adder("masker")
    add_inner_optimizer = _adder("inner_optimizer")
    add_objective = _adder("objective")
    add_sampler = _adder("sampler")
    add_dataset = _adder("dataset")
    add_launcher = _adder("launcher")
