"""fewmask-plugin-metaticket: Meta-ticket (Chijiwa et al., NeurIPS 2022) for fewmask.

Registers the ``metaticket`` masker and the ``metaticket`` objective. Select both in a config::

    masker: {name: metaticket}
    objective: {name: metaticket}
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_metaticket.masker import (
    MetaTicketConfig,
    MetaTicketMasker,
    initial_threshold,
    straight_through_mask,
    threshold_rank,
)
from fewmask_plugin_metaticket.objective import MetaTicketObjective, MetaTicketObjectiveConfig

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_masker("metaticket", MetaTicketMasker)
    registry.add_objective("metaticket", MetaTicketObjective)


__all__ = [
    "MetaTicketConfig",
    "MetaTicketMasker",
    "MetaTicketObjective",
    "MetaTicketObjectiveConfig",
    "initial_threshold",
    "straight_through_mask",
    "threshold_rank",
]
