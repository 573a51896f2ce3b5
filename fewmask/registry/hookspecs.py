"""The hook specifications: the one contract between fewmask and its plugins.

A plugin is a module (or object) with functions marked ``@fewmask.hookimpl``; it is found through
an entry point in the group ``fewmask``. Hooks only *register* components, so installing a plugin
adds names and never changes a run that does not name them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

PROJECT = "fewmask"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

if TYPE_CHECKING:
    from fewmask.registry import ScopedRegistry


@hookspec
def fewmask_register(registry: ScopedRegistry) -> None:
    """Register components with ``registry.add_backbone(name, cls)`` and its siblings.

    The same ``add_*`` method exists for every kind: ``add_backbone``, ``add_masker``,
    ``add_inner_optimizer``, ``add_objective``, ``add_sampler`` and ``add_dataset``. The options
    class and the one-line description come from the class attributes ``config_class`` and
    ``description``, or from the keywords ``config=`` and ``description=``, which take
    precedence. The registry records which plugin (distribution and version) provided each name.

    Example::

        class MyMasker(fewmask.Masker):
            config_class = MyMaskerConfig
            description = "What it does, in one line"
            ...

        @fewmask.hookimpl
        def fewmask_register(registry):
            registry.add_masker("my_masker", MyMasker)
            registry.add_masker("my_other", OtherMasker, config=OtherConfig, description="...")
    """
