"""fewmask-plugin-iterand: IteRand, periodic re-randomisation of pruned weights.

Registers the ``iterand`` masker, a wrapper around another masker (``metaticket`` by default)::

    masker: {name: iterand, options: {period: 1000, rate: 1.0}}
    objective: {name: metaticket}
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_iterand.masker import IteRandConfig, IteRandMasker, rerandomize_pruned

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_masker("iterand", IteRandMasker)


__all__ = ["IteRandConfig", "IteRandMasker", "rerandomize_pruned"]
