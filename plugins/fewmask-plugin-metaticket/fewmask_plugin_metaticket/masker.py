"""The Meta-ticket masker: binary masks from scores with a per-layer threshold fixed at start.

Behaviour as in the authors' code (see docs/algorithms.md):

- every maskable weight is re-drawn (kaiming-normal, fan-in, ReLU by default) and never
  meta-learned; a score tensor of the same shape is drawn kaiming-uniform (fan-in, ReLU, a=0);
- the layer's threshold is the k-th smallest initial score, ``k = 1 + round(p (n - 1))`` for the
  initial sparsity ``p``, fixed forever (``p = 0``: the minimum, so the mask starts dense);
- ``mask = 0 where score < threshold else 1`` (strict ``<``: the threshold entry is kept);
- the straight-through estimator passes the mask's gradient to the score unchanged, so pruned
  weights still get score gradients and can revive;
- ``exclude_head``: the classifier is neither masked nor re-drawn, even on a backbone that
  offers it as maskable (it stays dense, at the backbone's own initialisation).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from fewmask import Backbone, Masker, option


@attrs.frozen
class MetaTicketConfig:
    """Options of the ``metaticket`` masker."""

    init_sparsity: float = option(
        0.0, ge=0, lt=1, help="fraction pruned at start; sets each layer's fixed threshold"
    )
    weight_init: str = option(
        "kaiming_normal",
        choices=("kaiming_normal", "kaiming_uniform", "signed_constant", "constant"),
        help="how the fixed random weights are drawn (constant: sqrt(2/fan_in) everywhere)",
    )
    exclude_head: bool = option(
        False,
        help="leave the classifier (the backbone's head) dense and its weights as the backbone "
        "made them, even where the backbone offers it as maskable",
    )


def threshold_rank(numel: int, sparsity: float) -> int:
    """The 1-based rank ``k = 1 + round(p (n - 1))`` of the threshold score (Python rounding)."""
    return 1 + round(sparsity * (numel - 1))


def initial_threshold(scores: Tensor, sparsity: float) -> Tensor:
    """The k-th smallest score: ``k - 1`` entries fall strictly below it and get pruned."""
    return torch.kthvalue(
        scores.detach().flatten(), threshold_rank(scores.numel(), sparsity)
    ).values


def straight_through_mask(scores: Tensor, threshold: Tensor) -> Tensor:
    """``1[scores >= threshold]`` in the forward pass; identity gradient to ``scores``."""
    hard = (scores >= threshold).to(scores.dtype)
    return (scores - scores.detach()) + hard


def fan_in(weight: Tensor) -> int:
    """Inputs per output unit: ``in`` for Linear, ``in * kh * kw`` for convolutions."""
    return weight[0].numel()


def init_weight_(weight: Tensor, mode: str) -> None:
    """Re-draw ``weight`` in place with one of :class:`MetaTicketConfig`'s ``weight_init`` modes."""
    std = math.sqrt(2.0 / fan_in(weight))
    with torch.no_grad():
        if mode == "kaiming_normal":
            weight.normal_(0.0, std)
        elif mode == "kaiming_uniform":
            weight.uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std)
        elif mode == "signed_constant":
            weight.copy_(torch.randn_like(weight).sign() * std)
        elif mode == "constant":
            weight.fill_(std)
        else:
            raise ValueError(f"unknown weight_init {mode!r}")


def _key(name: str) -> str:
    return name.replace(".", "/")


class MetaTicketMasker(Masker):
    """Scores and fixed thresholds over a backbone's maskable weights (Chijiwa et al., 2022)."""

    config_class = MetaTicketConfig
    description = "Meta-ticket: scores -> binary mask, fixed per-layer threshold, STE"

    def __init__(self, config: MetaTicketConfig | None = None):
        super().__init__()
        self.config = config or MetaTicketConfig()
        self.names: list[str] = []
        self.scores = nn.ParameterDict()
        self.register_buffer("thresholds", torch.empty(0))

    def attach(self, backbone: Backbone) -> None:
        if self.names:
            raise RuntimeError("this MetaTicketMasker is already attached; make a new one")
        thresholds = []
        groups = backbone.parameter_groups()
        for name in backbone.maskable_parameter_names():
            if self.config.exclude_head and groups.get(name) == "head":
                continue
            weight = backbone.get_parameter(name)
            init_weight_(weight, self.config.weight_init)
            score = torch.empty_like(weight)
            bound = math.sqrt(6.0 / fan_in(weight))  # kaiming_uniform, fan_in, ReLU, a=0
            score.uniform_(-bound, bound)
            self.names.append(name)
            self.scores[_key(name)] = nn.Parameter(score)
            thresholds.append(initial_threshold(score, self.config.init_sparsity))
        self.thresholds = torch.stack(thresholds) if thresholds else torch.empty(0)

    def masks(self) -> dict[str, Tensor]:
        return {
            name: straight_through_mask(self.scores[_key(name)], self.thresholds[i])
            for i, name in enumerate(self.names)
        }

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return {name: self.scores[_key(name)] for name in self.names}
