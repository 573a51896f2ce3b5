"""The registry room: component records and the registry object, the hook specifications,
and the first-party plugin names used in install hints. Loading plugins into a registry is the
host's job (:func:`fewmask.session.load_registry`)."""

from fewmask.registry.components import (
    ComponentInfo,
    PluginFailure,
    Provider,
    Registry,
    ScopedRegistry,
)
from fewmask.registry.hookspecs import hookimpl

__all__ = ["ComponentInfo", "PluginFailure", "Provider", "Registry", "ScopedRegistry", "hookimpl"]
