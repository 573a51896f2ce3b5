"""The fused-SGD path of :func:`fewmask.engine.meta_gradient` (``EngineOptions.fused_sgd``).

For inner optimizers that take plain SGD steps ``p <- p - lr * dL/dp`` with a single non-zero
learning rate (``sgd`` and the ``maml`` / ``anil`` / ``boil`` policies). Per task, the per-task
loop computes ``W' = W - lr * m * dL/dE`` and uses ``E' = W' * m`` for ``E = W * m``; that is
``E' = E - lr * m**2 * dL/dE``, the same polynomial in ``W``, ``m`` and the gradient, so every
derivative agrees and only rounding differs. This path therefore:

- iterates on the masked weights ``E`` themselves: ``E <- E + m2 * h`` (one ``addcmul``);
- gets ``h = -lr * dL/dE`` directly by seeding the inner backward with ``-lr`` (the scaling
  happens on small activation gradients instead of weight-sized tensors, and the update's own
  backward is free);
- computes the masks, ``E = W * m`` and ``m2 = m * m`` once per meta-batch: tasks differentiate
  into detached leaves and one backward at the end carries the summed gradients into the
  scores and weights (the chain rule is linear in the gradient).

With ``first_order`` the loop's inner gradient carries no graph, so ``m2 = detach(m) * m``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fewmask.builtins.inner import SGDInner
from fewmask.interfaces import Backbone, Episode, InnerOptimizer, Params


def plain_sgd_rate(inner: InnerOptimizer, learning_rates: Mapping[str, float]) -> float | None:
    """The single non-zero learning rate of a plain-SGD inner optimizer, else None."""
    if not isinstance(inner, SGDInner) or type(inner).adapt is not SGDInner.adapt:
        return None
    rates = {lr for lr in learning_rates.values() if lr != 0}
    return rates.pop() if len(rates) == 1 else None


def accumulate(targets: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add each gradient to its target's ``.grad`` (``None`` gradients are skipped)."""
    for target, grad in zip(targets, grads):
        if grad is None:
            continue
        if target.grad is None:
            target.grad = grad.detach()
        else:
            target.grad.add_(grad)


class SharedLeaves:
    """Tensors computed once for all tasks: tasks use detached leaves, whose gradients are
    summed and sent through the tensors' graph by :meth:`backward`.

    Each item is ``(value, graph)``: the leaf holds ``value``; ``graph()`` returns a tensor of
    the same value with the autograd graph (it may be built only when it is needed).
    """

    def __init__(self, items: Sequence[tuple[Tensor, Callable[[], Tensor]]]):
        self.graphs = [graph for _, graph in items]
        self.leaves = [value.detach().requires_grad_() for value, _ in items]
        self.grads: list[Tensor | None] = [None] * len(self.leaves)

    def add(self, grads: Sequence[Tensor | None]) -> None:
        for i, grad in enumerate(grads):
            if grad is not None:
                self.grads[i] = grad if self.grads[i] is None else self.grads[i].add_(grad)

    def backward(self, targets: Sequence[Tensor]) -> None:
        pairs = [(graph(), g) for graph, g in zip(self.graphs, self.grads) if g is not None]
        pairs = [(t, g) for t, g in pairs if t.requires_grad]
        if pairs and targets:
            outputs, grad_outputs = zip(*pairs)
            grads = torch.autograd.grad(outputs, targets, grad_outputs, allow_unused=True)
            accumulate(targets, grads)


def _shared_items(
    params: Params, masks: Params, first_order: bool
) -> list[tuple[Tensor, Callable[[], Tensor]]]:
    """``W * m`` and ``m * m`` per masked weight; ``m * m`` reuses ``m``'s memory when the mask
    is binary (the usual case) and is only multiplied out for the final backward."""
    products, squares = [], []
    for name, mask in masks.items():
        product = params[name] * mask
        products.append((product, lambda product=product: product))
        left = mask.detach() if first_order else mask

        def square(left=left, mask=mask) -> Tensor:
            return left * mask

        binary = bool(((mask == 0) | (mask == 1)).all())
        squares.append((mask if binary else square(), square))
    return products + squares


def fused_meta_gradient(
    backbone: Backbone,
    masks: Params,
    lr: float,
    learning_rates: Mapping[str, float],
    inner: InnerOptimizer,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
) -> list[tuple[Tensor, Tensor]]:
    """Add the mean query loss's gradient to ``meta_params[*].grad``; (loss, accuracy) per task.

    ``lr`` is :func:`plain_sgd_rate`; parameters whose rate is 0 are not adapted.
    """
    params = dict(backbone.named_parameters())
    masks = {n: m for n, m in masks.items() if n in params}
    masked = list(masks)
    shared = SharedLeaves(_shared_items(params, masks, inner.first_order))
    effective = dict(zip(masked, shared.leaves[: len(masked)]))
    m2 = dict(zip(masked, shared.leaves[len(masked) :]))
    adapted = [n for n in params if learning_rates.get(n, 0.0) != 0.0]
    targets = list(meta_params.values())
    results = []
    for episode in episodes:  # `del`: no task's tensors may outlive it (they raise the peak)
        fast = adapt_masked(backbone, {**params, **effective}, m2, adapted, lr, episode, inner)
        logits = functional_call(backbone, fast, (episode.query_x,))
        loss = F.cross_entropy(logits, episode.query_y)
        del fast
        results.append((loss.detach(), (logits.argmax(1) == episode.query_y).float().mean()))
        grads = torch.autograd.grad(
            loss / len(episodes), targets + shared.leaves, allow_unused=True
        )
        del loss, logits
        accumulate(targets, grads[: len(targets)])
        shared.add(grads[len(targets) :])
        del grads
    shared.backward(targets)
    return results


def adapt_masked(
    backbone: Backbone,
    fast: Params,
    m2: Params,
    adapted: Sequence[str],
    lr: float,
    episode: Episode,
    inner: InnerOptimizer,
) -> Params:
    """``inner.steps`` SGD steps on ``fast`` (masked weights already applied): ``E + m2 * h``
    for the names in ``m2``, ``p + h`` for the others, with ``h = -lr * dL/dp``."""
    for _ in range(inner.steps):
        loss = F.cross_entropy(
            functional_call(backbone, fast, (episode.support_x,)), episode.support_y
        )
        steps = torch.autograd.grad(
            loss,
            [fast[n] for n in adapted],
            grad_outputs=torch.full_like(loss, -lr),
            create_graph=not inner.first_order,
            allow_unused=True,
        )
        fast = dict(fast)
        for name, step in zip(adapted, steps):
            if step is not None and name in m2:
                fast[name] = torch.addcmul(fast[name], m2[name], step)
            elif step is not None:
                fast[name] = fast[name] + step
    return fast
