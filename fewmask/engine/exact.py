"""The exact path of a meta-iteration: masked forward, task adaptation, meta-gradient, per task.

Everything here is a plain function over ``{name: tensor}`` dicts, run per task (the way the
authors and learn2learn do it), so second-order terms and BatchNorm are exact. The mask enters as
``weight * mask``: the inner gradient w.r.t. a masked weight is ``mask * dL/dW_eff`` (pruned
weights never move), and the query loss reaches the scores through every forward that used them.
The inner optimizer chooses its steps and whether they are differentiable
(:meth:`~fewmask.interfaces.InnerOptimizer.adapt`); the objective gives the losses and metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from fewmask.interfaces import Backbone, Episode, InnerOptimizer, Masker, MetaObjective, Params

TaskResult = tuple[Tensor, dict[str, Tensor]]
"""One task's detached query loss and metrics."""


def apply_masks(params: Params, masks: Params) -> Params:
    """``params`` with every masked entry replaced by ``param * mask``."""
    if not masks:
        return params
    return {n: p * masks[n] if n in masks else p for n, p in params.items()}


def masked_forward(backbone: Backbone, params: Params, masks: Params, x: Tensor) -> Tensor:
    """Logits of ``backbone`` run with ``params`` (masked by ``masks``) on ``x``."""
    return functional_call(backbone, apply_masks(params, masks), (x,))


def support_loss_fn(
    backbone: Backbone, objective: MetaObjective, masks: Params, episode: Episode
) -> Callable[[Params], Tensor]:
    """The objective's support loss of ``episode`` as a function of the parameters."""

    def support_loss(params: Params) -> Tensor:
        logits = masked_forward(backbone, params, masks, episode.support_x)
        return objective.support_loss(logits, episode.support_y)

    return support_loss


def adapt(
    backbone: Backbone,
    inner: InnerOptimizer,
    objective: MetaObjective,
    params: Params,
    masks: Params,
    episode: Episode,
    *,
    training: bool,
) -> Params:
    """Fast weights after the inner optimizer's steps on the episode's support set."""
    loss = support_loss_fn(backbone, objective, masks, episode)
    return inner.adapt(params, loss, training=training)


def detached_metrics(objective: MetaObjective, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The objective's metrics of one task, without a graph."""
    with torch.no_grad():
        return {name: value.detach() for name, value in objective.metrics(logits, y).items()}


class GradientSum:
    """Gradients summed per target, added in place into the first one that arrives."""

    def __init__(self, count: int):
        self.grads: list[Tensor | None] = [None] * count

    def add(self, grads: Sequence[Tensor | None]) -> None:
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if self.grads[i] is None:
                self.grads[i] = grad.detach()
            else:
                self.grads[i].add_(grad)  # type: ignore[union-attr]

    def by_name(self, names: Sequence[str]) -> dict[str, Tensor]:
        """``{name: gradient}``, leaving out the targets that got none."""
        return {n: g for n, g in zip(names, self.grads) if g is not None}


def exact_meta_gradient(
    backbone: Backbone,
    masker: Masker,
    inner: InnerOptimizer,
    objective: MetaObjective,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
) -> tuple[list[TaskResult], dict[str, Tensor]]:
    """Per-task results and the gradient of the mean query loss w.r.t. ``meta_params``.

    Each task is adapted and differentiated on its own, so only one task's graph is alive at a
    time; its gradient is divided by the number of tasks (the mean meta-loss).
    """
    targets = list(meta_params.values())
    total = GradientSum(len(targets))
    results = []
    for episode in episodes:
        masks = masker.masks()
        params = dict(backbone.named_parameters())
        fast = adapt(backbone, inner, objective, params, masks, episode, training=True)
        logits = masked_forward(backbone, fast, masks, episode.query_x)
        loss = objective.query_loss(logits, episode.query_y)
        total.add(torch.autograd.grad(loss / len(episodes), targets, allow_unused=True))
        results.append((loss.detach(), detached_metrics(objective, logits, episode.query_y)))
    return results, total.by_name(list(meta_params))


def frozen_masks(masker: Masker) -> Params:
    """The masker's current masks, detached: constant for evaluation (compute once, reuse)."""
    with torch.no_grad():
        return {n: m.detach() for n, m in masker.masks().items()}


def evaluate_episode(
    backbone: Backbone,
    inner: InnerOptimizer,
    objective: MetaObjective,
    masks: Params,
    episode: Episode,
) -> TaskResult:
    """Query loss and metrics after the inner optimizer's test-time adaptation.

    ``masks`` come from :func:`frozen_masks` (they do not change during evaluation).
    """
    params = {n: p.detach().requires_grad_() for n, p in backbone.named_parameters()}
    fast = adapt(backbone, inner, objective, params, masks, episode, training=False)
    with torch.no_grad():
        logits = masked_forward(backbone, fast, masks, episode.query_x)
        loss = objective.query_loss(logits, episode.query_y)
    return loss, detached_metrics(objective, logits, episode.query_y)
