"""Outer-loop optimizers and the per-iteration learning-rate schedule shared by objectives.

The schedule follows the Meta-ticket code: per *iteration*, set before the update; linear warmup
``lr * (it + 1) / (W + 1)`` for ``it < W``, then cosine
``lr * (1 + cos(pi (it - W) / (T - W))) / 2``.
It is a pure function of the iteration, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

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


def build_outer_optimizer(config: OuterConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by ``config`` over ``params``."""
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
