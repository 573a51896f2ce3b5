"""The functional core of one meta-iteration: masked forward, task adaptation, meta-gradient.

Everything here is a plain function over ``{name: tensor}`` dicts, run per task (the way the
authors and learn2learn do it), so second-order terms and BatchNorm are exact. The mask enters as
``weight * mask``: the inner gradient w.r.t. a masked weight is ``mask * dL/dW_eff`` (pruned
weights never move), and the query loss reaches the scores through every forward that used them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fewmask.interfaces import Backbone, Episode, InnerOptimizer, Masker, Params


def apply_masks(params: Params, masks: Params) -> Params:
    """``params`` with every masked entry replaced by ``param * mask``."""
    if not masks:
        return params
    return {n: p * masks[n] if n in masks else p for n, p in params.items()}


def masked_forward(backbone: Backbone, params: Params, masks: Params, x: Tensor) -> Tensor:
    """Logits of ``backbone`` run with ``params`` (masked by ``masks``) on ``x``."""
    return functional_call(backbone, apply_masks(params, masks), (x,))


def adapt(
    backbone: Backbone,
    inner: InnerOptimizer,
    params: Params,
    masks: Params,
    episode: Episode,
    learning_rates: Mapping[str, float],
    steps: int,
    create_graph: bool,
) -> Params:
    """Fast weights after ``steps`` inner updates on the episode's support set."""

    def support_loss(p: Params) -> Tensor:
        logits = masked_forward(backbone, p, masks, episode.support_x)
        return F.cross_entropy(logits, episode.support_y)

    return inner.adapt(params, support_loss, learning_rates, steps, create_graph)


@attrs.frozen
class TaskStats:
    """Mean query loss and accuracy over a batch of tasks (floats)."""

    loss: float
    accuracy: float


def meta_gradient(
    backbone: Backbone,
    masker: Masker,
    inner: InnerOptimizer,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
    learning_rates: Mapping[str, float],
) -> TaskStats:
    """Add the gradient of the mean query loss over ``episodes`` to ``meta_params[*].grad``.

    Each task is adapted and differentiated on its own, so only one task's graph is alive at a
    time; its gradient is divided by the number of tasks (the mean meta-loss).
    """
    targets = list(meta_params.values())
    count = len(episodes)
    losses, accuracies = [], []
    for episode in episodes:
        masks = masker.masks()
        params = dict(backbone.named_parameters())
        fast = adapt(
            backbone,
            inner,
            params,
            masks,
            episode,
            learning_rates,
            inner.steps,
            create_graph=not inner.first_order,
        )
        logits = masked_forward(backbone, fast, masks, episode.query_x)
        loss = F.cross_entropy(logits, episode.query_y)
        grads = torch.autograd.grad(loss / count, targets, allow_unused=True)
        for target, grad in zip(targets, grads):
            if grad is None:
                continue
            if target.grad is None:
                target.grad = grad.detach()
            else:
                target.grad.add_(grad)
        losses.append(loss.detach())
        accuracies.append((logits.argmax(1) == episode.query_y).float().mean())
    return TaskStats(torch.stack(losses).mean().item(), torch.stack(accuracies).mean().item())


def frozen_masks(masker: Masker) -> Params:
    """The masker's current masks, detached: constant for evaluation (compute once, reuse)."""
    with torch.no_grad():
        return {n: m.detach() for n, m in masker.masks().items()}


def evaluate_episode(
    backbone: Backbone,
    masks: Params,
    inner: InnerOptimizer,
    episode: Episode,
    learning_rates: Mapping[str, float],
) -> tuple[float, float]:
    """Query (loss, accuracy) after adapting with ``inner.test_steps``; no meta-gradient.

    ``masks`` come from :func:`frozen_masks` (they do not change during evaluation).
    """
    params = {n: p.detach().requires_grad_() for n, p in backbone.named_parameters()}
    fast = adapt(
        backbone,
        inner,
        params,
        masks,
        episode,
        learning_rates,
        inner.test_steps,
        create_graph=False,
    )
    with torch.no_grad():
        logits = masked_forward(backbone, fast, masks, episode.query_x)
        loss = F.cross_entropy(logits, episode.query_y)
        accuracy = (logits.argmax(1) == episode.query_y).float().mean()
    return loss.item(), accuracy.item()
