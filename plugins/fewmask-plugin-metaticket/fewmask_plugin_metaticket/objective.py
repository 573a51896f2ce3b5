"""The Meta-ticket objective: meta-learn the masker's scores, never the weights."""

from __future__ import annotations

import attrs
from torch import nn

from fewmask import Backbone, ConfigError, Masker, OuterConfig, OuterLoopObjective, option


@attrs.frozen
class MetaTicketObjectiveConfig(OuterConfig):
    """Outer loop of Meta-ticket: SGD lr 10, momentum 0.9, per-iteration warmup then cosine."""

    optimizer: str = option("sgd", choices=("adamw", "adam", "sgd"), help="outer optimizer")
    lr: float = option(10.0, gt=0, help="outer learning rate of the scores")
    schedule: str = option("cosine", choices=("constant", "cosine"), help="lr schedule")
    warmup: int = option(1000, ge=0, help="linear warmup iterations (100 for CIFAR-FS/VGG-Flower)")


class MetaTicketObjective(OuterLoopObjective):
    """Only the scores are meta-learned: BatchNorm, biases and the head stay at their initial
    values in the outer loop (they are still adapted per task in the inner loop)."""

    config_class = MetaTicketObjectiveConfig
    description = "meta-learn mask scores (SGD lr 10, momentum 0.9, warmup + cosine)"
    default_masker = "metaticket"
    needs_scores = True

    def __init__(self, config: MetaTicketObjectiveConfig | None = None):
        self.config = config or MetaTicketObjectiveConfig()

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
        return scores
