"""The ``smoothed_scores`` objective: meta-learn mask scores with a label-smoothed query loss.

Like Meta-ticket, the outer loop learns only the masker's scores (the weights stay as drawn),
with SGD and momentum. The difference is the meta-loss: the query loss of each task is
cross-entropy with label smoothing (Szegedy et al., 2016), which keeps the adapted model from
becoming over-confident on its few query images. The support loss (inner loop) and the
reported accuracy keep fewmask's defaults.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewmask import Backbone, ConfigError, Masker, MetaObjective, option


@attrs.frozen
class SmoothedScoresConfig:
    """Options of the ``smoothed_scores`` objective."""

    smoothing: float = option(
        0.1, ge=0, lt=1, help="label smoothing of the query loss (0: plain cross-entropy)"
    )
    lr: float = option(10.0, gt=0, help="outer SGD learning rate of the scores")
    min_lr: float = option(0.0, ge=0, help="learning rate at the end of the cosine decay")
    momentum: float = option(0.9, ge=0, lt=1, help="SGD momentum")

    def check(self) -> dict[str, str]:
        """Problems that involve several fields, by field (``fewmask validate`` shows them)."""
        if self.min_lr > self.lr:
            return {"min_lr": f"must be <= lr ({self.lr}), got {self.min_lr}"}
        return {}


class SmoothedScoresObjective(MetaObjective):
    """Meta-learn the masker's scores; query loss = label-smoothed cross-entropy."""

    config_class = SmoothedScoresConfig
    description = "meta-learn mask scores; label-smoothed cross-entropy query loss"
    default_masker = "global_magnitude"

    def __init__(self, config: SmoothedScoresConfig):
        self.config = config

    def meta_parameters(self, backbone: Backbone, masker: Masker) -> dict[str, nn.Parameter]:
        scores = masker.meta_parameters()
        if not scores:
            raise ConfigError(
                [
                    f"$.masker: objective 'smoothed_scores' learns mask scores, but the masker "
                    f"({type(masker).__name__}) has none; try masker.name: global_magnitude"
                ]
            )
        return scores

    def query_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.config.smoothing)

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.config.lr, momentum=self.config.momentum)

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, total_iterations: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_iterations, eta_min=self.config.min_lr
        )
