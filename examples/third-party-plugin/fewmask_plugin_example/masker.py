"""The ``global_magnitude`` masker: one threshold over all layers, fixed at the start.

Meta-ticket gives every layer its own threshold, so each layer starts at the same sparsity.
Here the scores start as the weights' magnitudes ``|w|`` and are ranked *together*: one
threshold, the ``sparsity`` quantile of all scores, is computed once and kept in a buffer.
Layers with small weights are pruned more, and as the scores are meta-learned each layer's
sparsity can drift. The straight-through estimator passes the mask's gradient to the scores
unchanged, so a pruned weight can come back.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from fewmask import Backbone, Masker, option


@attrs.frozen
class GlobalMagnitudeConfig:
    """Options of the ``global_magnitude`` masker."""

    sparsity: float = option(
        0.5, ge=0, lt=1, help="fraction of all maskable weights pruned at the start"
    )


def global_threshold(scores: list[Tensor], sparsity: float) -> Tensor:
    """The smallest kept score when the ``sparsity`` fraction of all ``scores`` is pruned."""
    everything = torch.cat([s.detach().flatten() for s in scores])
    pruned = int(sparsity * everything.numel())
    return torch.kthvalue(everything, pruned + 1).values


def straight_through(scores: Tensor, threshold: Tensor) -> Tensor:
    """``1[scores >= threshold]`` forward; the gradient goes to ``scores`` unchanged."""
    hard = (scores >= threshold).to(scores.dtype)
    return hard + (scores - scores.detach())


class GlobalMagnitudeMasker(Masker):
    """Scores (parameters) initialised to ``|weight|``, one global threshold (a buffer)."""

    config_class = GlobalMagnitudeConfig
    description = "scores start as |w|; one threshold over all layers, fixed; STE"

    def __init__(self, config: GlobalMagnitudeConfig):
        super().__init__()
        self.config = config
        self.names: list[str] = []
        self.scores = nn.ParameterDict()  # keys: parameter names with "." -> "/"
        self.register_buffer("threshold", torch.zeros(()))

    def attach(self, backbone: Backbone) -> None:
        for name in backbone.maskable_parameter_names():
            weight = backbone.get_parameter(name).detach()
            self.names.append(name)
            self.scores[name.replace(".", "/")] = nn.Parameter(weight.abs().clone())
        if self.names:
            self.threshold = global_threshold(list(self.scores.values()), self.config.sparsity)

    def masks(self) -> dict[str, Tensor]:
        return {
            name: straight_through(self.scores[name.replace(".", "/")], self.threshold)
            for name in self.names
        }

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return {name: self.scores[name.replace(".", "/")] for name in self.names}
