"""The Meta-ticket objective: meta-learn the masker's scores, never the weights."""

from __future__ import annotations

import attrs
import torch
from torch import nn

from fewmask import (
    Backbone,
    ConfigError,
    Masker,
    OuterConfig,
    OuterLoopObjective,
    build_outer_optimizer,
    option,
)


@attrs.frozen
class MetaTicketObjectiveConfig(OuterConfig):
    """Outer loop of Meta-ticket: SGD lr 10, momentum 0.9, per-iteration warmup then cosine."""

    optimizer: str = option("sgd", choices=("adamw", "adam", "sgd"), help="outer optimizer")
    lr: float = option(10.0, gt=0, help="outer learning rate of the scores")
    schedule: str = option("cosine", choices=("constant", "cosine"), help="lr schedule")
    warmup: int = option(1000, ge=0, help="linear warmup iterations (100 for CIFAR-FS/VGG-Flower)")
    learn_head: bool = option(
        False,
        help="meta-learn the classifier's weights (and bias) next to the scores; false: the "
        "authors' fixed random head",
    )
    head_lr: float = option(
        0.01, gt=0, help="peak outer rate of the head with learn_head (same optimizer, schedule)"
    )


class MetaTicketObjective(OuterLoopObjective):
    """Only the scores are meta-learned: BatchNorm, biases and the head stay at their initial
    values in the outer loop (they are still adapted per task in the inner loop).

    With ``learn_head`` the head's parameters are meta-learned too, at their own peak rate
    ``head_lr`` (a second parameter group of the same optimizer and schedule); a masked head
    cannot be learned this way (its score and its weight would share a name)."""

    config_class = MetaTicketObjectiveConfig
    description = "meta-learn mask scores (SGD lr 10, momentum 0.9, warmup + cosine)"
    default_masker = "metaticket"
    needs_scores = True

    def __init__(self, config: MetaTicketObjectiveConfig | None = None):
        self.config = config or MetaTicketObjectiveConfig()
        self._head: set[int] = set()  # ids of the head parameters meta-learned with learn_head

    def meta_parameters(self, backbone: Backbone, masker: Masker) -> dict[str, nn.Parameter]:
        scores = masker.meta_parameters()
        if not scores:
            raise ConfigError(
                [
                    "$.objective.name: objective 'metaticket' meta-learns mask scores, "
                    "but the masker "
                    f"({type(masker).__name__}) has none; set masker.name: metaticket"
                ]
            )
        if not self.config.learn_head:
            return scores
        groups = backbone.parameter_groups()
        head = {n: p for n, p in backbone.named_parameters() if groups[n] == "head"}
        clash = sorted(set(head) & set(scores))
        if clash:
            raise ConfigError(
                [
                    "$.objective.options.learn_head: the head weight "
                    f"{', '.join(clash)} is masked, so it has a score of the same name; leave "
                    "the head unmasked (masker.options.exclude_head: true)"
                ]
            )
        self._head = {id(p) for p in head.values()}
        return {**scores, **head}

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """One group for the scores; with ``learn_head`` a second one for the head, scaled to
        ``head_lr`` (the schedule multiplies each group's ``lr_scale``)."""
        head = [p for p in params if id(p) in self._head]
        if not head:
            return super().build_optimizer(params)
        scores = [p for p in params if id(p) not in self._head]
        groups = [
            {"params": scores},
            {
                "params": head,
                "lr": self.config.head_lr,
                "lr_scale": self.config.head_lr / self.config.lr,
            },
        ]
        return build_outer_optimizer(self.config, groups)
