"""fewmask-plugin-example: a template for a third-party fewmask plugin.

Registers the ``global_magnitude`` masker and the ``smoothed_scores`` objective::

    objective: {name: smoothed_scores, options: {smoothing: 0.1}}
    masker: {name: global_magnitude, options: {sparsity: 0.5}}   # the objective's default
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_example.masker import (
    GlobalMagnitudeConfig,
    GlobalMagnitudeMasker,
    global_threshold,
    straight_through,
)
from fewmask_plugin_example.objective import SmoothedScoresConfig, SmoothedScoresObjective

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    """Called once per session by fewmask; adds this plugin's components to ``registry``."""
    registry.add_masker("global_magnitude", GlobalMagnitudeMasker)
    registry.add_objective("smoothed_scores", SmoothedScoresObjective)


__all__ = [
    "GlobalMagnitudeConfig",
    "GlobalMagnitudeMasker",
    "SmoothedScoresConfig",
    "SmoothedScoresObjective",
    "global_threshold",
    "straight_through",
]
