"""The ``maml`` objective: meta-learn the initial weights of every backbone parameter."""

from __future__ import annotations

import attrs
from torch import nn

from fewmask.builtins.outer import OuterConfig, OuterLoopObjective
from fewmask.interfaces import Backbone, Masker
from fewmask.options import option


@attrs.frozen
class MAMLConfig(OuterConfig):
    """Options of ``maml``: AdamW 1e-3 at a constant rate, as in the paper's baselines."""

    learn_head: bool = option(
        True,
        help="meta-learn the classifier too; false: the head keeps its random initialisation "
        "in the outer loop (the inner loop still adapts it per task)",
    )


class MAMLObjective(OuterLoopObjective):
    """MAML (Finn et al., 2017): the outer loop learns every backbone parameter's initial value.

    First-order MAML is the same objective with ``inner.options.first_order: true``; ANIL and BOIL
    differ only in the inner learning rates. Losses and metrics: cross-entropy and accuracy.
    """

    config_class = MAMLConfig
    description = "meta-learn the initial weights (MAML; first-order via inner.first_order)"

    def __init__(self, config: MAMLConfig):
        self.config = config

    def meta_parameters(self, backbone: Backbone, masker: Masker) -> dict[str, nn.Parameter]:
        params = dict(backbone.named_parameters())
        if self.config.learn_head:
            return params
        groups = backbone.parameter_groups()
        return {name: p for name, p in params.items() if groups[name] != "head"}
