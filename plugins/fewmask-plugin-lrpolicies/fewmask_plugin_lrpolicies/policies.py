"""Inner learning-rate policies over the backbone's body/head split: ANIL, BOIL, per layer.

Each policy is an inner optimizer (plain differentiable SGD steps) whose only difference is the
learning rate it gives each parameter. A rate of 0 freezes a parameter in the inner loop; it is
still differentiated, and the outer loop may still meta-learn it (MAML family). The groups come
from ``Backbone.parameter_groups()`` (the head is ``get_classifier()``), not from name keywords.

- ``anil`` (Raghu et al., 2020): only the head adapts (body rate 0).
- ``boil`` (Oh et al., 2021): only the body adapts (head rate 0). With Meta-ticket the head is
  then a fixed random layer forever (it is not meta-learned either), as in the authors' code.
- ``per_layer``: rates by parameter-name pattern (``fnmatch``), first match wins, else ``lr``.

MAML's own policy, every parameter at ``lr``, is the built-in ``sgd``.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import attrs

from fewmask import Backbone, SGDInner, SGDInnerConfig, option


@attrs.frozen
class PolicyConfig(SGDInnerConfig):
    """Options of ``anil`` and ``boil``: those of ``sgd``."""


@attrs.frozen
class PerLayerConfig(SGDInnerConfig):
    """Options of ``per_layer``: ``rates`` maps name patterns to inner learning rates."""

    rates: dict[str, float] = option(
        factory=dict,
        help="pattern -> inner lr, e.g. {'classifier.*': 0.0, 'features.1.*': 0.1}; "
        "patterns may also be the groups 'body' and 'head'",
    )

    def check(self) -> dict[str, str]:
        bad = {k: v for k, v in self.rates.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            return {"rates": f"every rate must be a finite number >= 0, got {bad}"}
        return {}


class GroupPolicy(SGDInner):
    """SGD with rate ``lr`` for the groups in ``adapted`` and 0 for the others."""

    config_class = PolicyConfig
    adapted: frozenset[str]

    def learning_rates(self, backbone: Backbone) -> dict[str, float]:
        return {
            name: (self.config.lr if group in self.adapted else 0.0)
            for name, group in backbone.parameter_groups().items()
        }


class ANILPolicy(GroupPolicy):
    """Only the head adapts in the inner loop (ANIL)."""

    description = "inner SGD on the head only (ANIL)"
    adapted = frozenset({"head"})


class BOILPolicy(GroupPolicy):
    """Only the body adapts in the inner loop (BOIL)."""

    description = "inner SGD on the body only (BOIL)"
    adapted = frozenset({"body"})


class PerLayerPolicy(SGDInner):
    """Per-parameter rates by name pattern or group; unmatched parameters get ``lr``."""

    config_class = PerLayerConfig
    description = "inner SGD with per-layer rates by name pattern or group"

    def learning_rates(self, backbone: Backbone) -> dict[str, float]:
        rates = {}
        for name, group in backbone.parameter_groups().items():
            rates[name] = next(
                (
                    lr
                    for pattern, lr in self.config.rates.items()
                    if pattern == group or fnmatchcase(name, pattern)
                ),
                self.config.lr,
            )
        return rates
