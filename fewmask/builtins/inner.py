"""The ``sgd`` inner optimizer: plain differentiable gradient steps on the support loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import torch
from torch import Tensor

from fewmask.interfaces import Backbone, InnerOptimizer, Params, SGDSteps
from fewmask.options import option


@attrs.frozen
class SGDInnerConfig:
    """Options of the ``sgd`` inner optimizer."""

    lr: float = option(0.4, ge=0, help="inner learning rate of every parameter")
    steps: int = option(1, ge=1, le=10_000, help="inner steps during meta-training")
    test_steps: int | None = option(
        None, ge=1, le=10_000, help="inner steps at validation and meta-test (default: steps)"
    )
    first_order: bool = option(False, help="drop second-order terms (first-order MAML)")


class SGDInner(InnerOptimizer):
    """``p <- p - lr_p * dL_support/dp`` for every parameter, ``steps`` times, differentiably.

    Description:
        Subclasses change only the per-parameter rates, by overriding :meth:`learning_rates`
        (a rate of 0 freezes a parameter in the inner loop; ANIL and BOIL are such policies).
        A subclass that overrides :meth:`adapt` is no longer plain SGD for the engine's fused
        path unless it overrides :meth:`plain_sgd` too.

    Example::

        inner = SGDInner(SGDInnerConfig(lr=0.4, steps=1))
        inner.attach(backbone)
        fast = inner.adapt(dict(backbone.named_parameters()), loss_fn, training=True)
    """

    config_class = SGDInnerConfig
    description = "differentiable SGD steps on the support set"

    def __init__(self, config: SGDInnerConfig):
        self.config = config
        self.steps = config.steps
        self.test_steps = config.test_steps or config.steps
        self.first_order = config.first_order
        self.rates: dict[str, float] | None = None  # set by attach()

    def learning_rates(self, backbone: Backbone) -> dict[str, float]:
        """The rate of each of ``backbone``'s parameters (all ``lr``); the policy hook."""
        return {name: self.config.lr for name, _ in backbone.named_parameters()}

    def attach(self, backbone: Backbone) -> None:
        self.rates = self.learning_rates(backbone)

    def adapt(
        self, params: Params, support_loss: Callable[[Params], Tensor], *, training: bool
    ) -> Params:
        plan = self._plan(training)
        return sgd_steps(params, support_loss, plan.rates, plan.steps, plan.create_graph)

    def plain_sgd(self, *, training: bool) -> SGDSteps | None:
        return self._plan(training) if type(self).adapt is SGDInner.adapt else None

    def _plan(self, training: bool) -> SGDSteps:
        if self.rates is None:
            raise RuntimeError(f"{type(self).__name__}.attach(backbone) must come before adapt()")
        return SGDSteps(
            self.rates,
            self.steps if training else self.test_steps,
            training and not self.first_order,
        )


def sgd_steps(
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    learning_rates: Mapping[str, float],
    steps: int,
    create_graph: bool,
) -> Params:
    """``steps`` SGD updates; parameters with learning rate 0 are left out of the gradient."""
    names = [n for n in params if learning_rates.get(n, 0.0) != 0.0]
    if not names:  # every rate is 0 (e.g. lr: 0.0): the steps change nothing
        return params
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
