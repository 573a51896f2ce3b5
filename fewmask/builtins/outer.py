"""Outer-loop optimizers and the per-iteration learning-rate schedule shared by objectives.

The schedule follows the Meta-ticket code: per *iteration*, set before the update; linear warmup
``lr * (it + 1) / (W + 1)`` for ``it < W``, then cosine
``lr * (1 + cos(pi (it - W) / (T - W))) / 2``. :class:`ScheduledLR` is that schedule as a torch
LR scheduler: it evaluates the expression from the iteration (no multiplicative factor), so
the rates are exactly :func:`scheduled_lr`'s. :class:`OuterLoopObjective` builds both from an
objective's config.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from fewmask.interfaces import MetaObjective
from fewmask.options import option


@attrs.frozen
class OuterConfig:
    """Outer optimizer and schedule (defaults: MAML's AdamW 1e-3, constant)."""

    optimizer: str = option("adamw", choices=("adamw", "adam", "sgd"), help="outer optimizer")
    lr: float = option(1e-3, gt=0, help="outer (meta) learning rate")
    momentum: float = option(0.9, ge=0, lt=1, help="SGD momentum (sgd only)")
    weight_decay: float = option(0.0, ge=0, help="weight decay")
    schedule: str = option("constant", choices=("constant", "cosine"), help="lr schedule")
    warmup: int = option(0, ge=0, help="linear warmup iterations (cosine schedule only)")


def build_outer_optimizer(
    config: OuterConfig, params: list[nn.Parameter] | list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The optimizer named by ``config`` over ``params`` (parameters, or torch parameter groups,
    which may carry an ``lr_scale`` for :class:`ScheduledLR`)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def scheduled_lr(config: OuterConfig, iteration: int, total_iterations: int) -> float:
    """The learning rate at ``iteration`` (0-based) of ``total_iterations``."""
    if config.schedule == "constant":
        return config.lr
    warmup = config.warmup
    if iteration < warmup:
        return config.lr * (iteration + 1) / (warmup + 1)
    if iteration >= total_iterations:
        iteration = total_iterations - 1
    span = max(total_iterations - warmup, 1)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * (iteration - warmup) / span))


_PLAN = ("config", "total_iterations")


class ScheduledLR(LRScheduler):
    """Every param group's rate at iteration ``last_epoch`` is :func:`scheduled_lr`'s, times
    the group's ``lr_scale`` if it has one (a group with its own peak rate, same schedule).

    Step it once after every outer update. Its state (saved in checkpoints) is the iteration;
    the schedule itself comes from ``config``.

    Example::

        optimizer = build_outer_optimizer(config, params)
        scheduler = ScheduledLR(optimizer, config, total_iterations=1000)
        ...; optimizer.step(); scheduler.step()
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: OuterConfig,
        total_iterations: int,
        last_epoch: int = -1,
    ):
        self.config, self.total_iterations = config, total_iterations
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        lr = scheduled_lr(self.config, self.last_epoch, self.total_iterations)
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    replannable = True
    """Its rates are a function of the iteration and the plan, so a resumed run may change the
    plan (``train.iterations``, the outer lr) and continue on the new one."""

    def state_dict(self) -> dict[str, Any]:
        """Where the schedule is (the iteration), not its plan: ``config`` and
        ``total_iterations`` come from the run's config each time the run is built."""
        return {k: v for k, v in super().state_dict().items() if k not in _PLAN}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue at the saved iteration on this scheduler's plan; the optimizer's rate is set
        to the plan's rate there (checkpoints written before kept the plan: it is ignored)."""
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in _PLAN})
        rates = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, rates):
            group["lr"] = lr
        self._last_lr = rates


class OuterLoopObjective(MetaObjective):
    """A meta-objective whose ``self.config`` is an :class:`OuterConfig` (or a subclass): its
    outer optimizer is :func:`build_outer_optimizer`'s and its schedule :class:`ScheduledLR`.
    Subclasses set ``self.config`` and choose the meta-parameters."""

    config: OuterConfig

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return build_outer_optimizer(self.config, params)

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, total_iterations: int
    ) -> ScheduledLR:
        return ScheduledLR(optimizer, self.config, total_iterations)
