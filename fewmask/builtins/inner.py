"""The ``sgd`` inner optimizer: plain differentiable gradient steps on the support loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import torch
from torch import Tensor

from fewmask.interfaces import Backbone, InnerOptimizer, Params
from fewmask.options import option


@attrs.frozen
class SGDInnerConfig:
    """Options of the ``sgd`` inner optimizer."""

    lr: float = option(0.4, ge=0, help="inner learning rate of every parameter")
    steps: int = option(1, ge=1, help="inner steps during meta-training")
    test_steps: int | None = option(
        None, ge=1, help="inner steps at validation and meta-test (default: steps)"
    )
    first_order: bool = option(False, help="drop second-order terms (first-order MAML)")


class SGDInner(InnerOptimizer):
    """``p <- p - lr * dL_support/dp`` for every parameter, ``steps`` times, differentiably."""

    def __init__(self, config: SGDInnerConfig):
        self.config = config
        self.steps = config.steps
        self.test_steps = config.test_steps or config.steps
        self.first_order = config.first_order

    def learning_rates(self, backbone: Backbone) -> dict[str, float]:
        return {name: self.config.lr for name, _ in backbone.named_parameters()}

    def adapt(
        self,
        params: Params,
        support_loss: Callable[[Params], Tensor],
        learning_rates: Mapping[str, float],
        steps: int,
        create_graph: bool,
    ) -> Params:
        return sgd_steps(params, support_loss, learning_rates, steps, create_graph)


def sgd_steps(
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    learning_rates: Mapping[str, float],
    steps: int,
    create_graph: bool,
) -> Params:
    """``steps`` SGD updates; parameters with learning rate 0 are left out of the gradient."""
    names = [n for n in params if learning_rates.get(n, 0.0) != 0.0]
    for _ in range(steps):
        loss = loss_fn(params)
        grads = torch.autograd.grad(
            loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
        )
        params = dict(params)
        for name, grad in zip(names, grads):
            if grad is not None:
                params[name] = params[name] - learning_rates[name] * grad
    return params
