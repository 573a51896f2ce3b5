"""fewmask-plugin-lrpolicies: ANIL / BOIL / per-layer inner learning rates.

Registers the inner optimizers ``anil``, ``boil`` and ``per_layer`` (MAML's, every layer at one
rate, is the built-in ``sgd``); they work with any objective, e.g. Meta-ticket + BOIL::

    objective: {name: metaticket}
    inner: {name: boil, options: {lr: 0.5}}
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_lrpolicies.policies import (
    ANILPolicy,
    BOILPolicy,
    PerLayerConfig,
    PerLayerPolicy,
    PolicyConfig,
)

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_inner_optimizer("anil", ANILPolicy)
    registry.add_inner_optimizer("boil", BOILPolicy)
    registry.add_inner_optimizer("per_layer", PerLayerPolicy)


__all__ = ["ANILPolicy", "BOILPolicy", "PerLayerConfig", "PerLayerPolicy", "PolicyConfig"]
