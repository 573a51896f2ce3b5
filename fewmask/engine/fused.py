"""The fused-SGD path of :class:`fewmask.engine.Engine` (``EngineOptions.fused_sgd``).

For inner optimizers whose :meth:`~fewmask.interfaces.InnerOptimizer.plain_sgd` says that they
take plain SGD steps ``p <- p - lr * dL/dp`` with a single non-zero learning rate (``sgd`` and the
``anil`` / ``boil`` policies). Per task, the per-task loop computes ``W' = W - lr * m * dL/dE``
and uses ``E' = W' * m`` for ``E = W * m``; that is ``E' = E - lr * m**2 * dL/dE``, the same
polynomial in ``W``, ``m`` and the gradient, so every derivative agrees and only rounding
differs. This path therefore:

- iterates on the masked weights ``E`` themselves: ``E <- E + m2 * h`` (one ``addcmul``);
- gets ``h = -lr * dL/dE`` directly by seeding the inner backward with ``-lr`` (the scaling
  happens on small activation gradients instead of weight-sized tensors, and the update's own
  backward is free);
- computes the masks, ``E = W * m`` and ``m2 = m * m`` once per meta-batch: tasks differentiate
  into detached leaves and one backward at the end carries the summed gradients into the
  scores and weights (the chain rule is linear in the gradient).

Without ``create_graph`` (first order) the loop's inner gradient carries no graph, so
``m2 = detach(m) * m``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import functional_call

from fewmask.engine.exact import GradientSum, TaskResult, detached_metrics
from fewmask.interfaces import Backbone, Episode, MetaObjective, Params, SGDSteps


def single_rate(plan: SGDSteps | None) -> float | None:
    """The one non-zero learning rate of a plain-SGD plan, else None (the exact path)."""
    if plan is None:
        return None
    rates = {lr for lr in plan.rates.values() if lr != 0}
    return rates.pop() if len(rates) == 1 else None


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

    def backward(self, targets: Sequence[Tensor], total: GradientSum) -> None:
        """Add the gradients the leaves collected, carried into ``targets``, to ``total``."""
        pairs = [(graph(), g) for graph, g in zip(self.graphs, self.grads) if g is not None]
        pairs = [(t, g) for t, g in pairs if t.requires_grad]
        if pairs and targets:
            outputs, grad_outputs = zip(*pairs)
            total.add(torch.autograd.grad(outputs, targets, grad_outputs, allow_unused=True))


def _shared_items(
    params: Params, masks: Params, first_order: bool
) -> list[tuple[Tensor, Callable[[], Tensor]]]:
    """``W * m`` and ``m * m`` per masked weight. ``m * m``'s value is computed without a graph
    (for a binary mask it equals ``m``, but testing that would stop for the host); its graph is
    built only for the final backward."""
    products, squares = [], []
    for name, mask in masks.items():
        product = params[name] * mask
        products.append((product, lambda product=product: product))
        left = mask.detach() if first_order else mask

        def square(left=left, mask=mask) -> Tensor:
            return left * mask

        with torch.no_grad():
            squares.append((square(), square))
    return products + squares


def fused_meta_gradient(
    backbone: Backbone,
    masks: Params,
    plan: SGDSteps,
    lr: float,
    objective: MetaObjective,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
) -> tuple[list[TaskResult], dict[str, Tensor]]:
    """Per-task results and the gradient of the mean query loss w.r.t. ``meta_params``.

    ``lr`` is :func:`single_rate` of ``plan``; parameters whose rate is 0 are not adapted.
    """
    params = dict(backbone.named_parameters())
    masks = {n: m for n, m in masks.items() if n in params}
    masked = list(masks)
    shared = SharedLeaves(_shared_items(params, masks, not plan.create_graph))
    effective = dict(zip(masked, shared.leaves[: len(masked)]))
    m2 = dict(zip(masked, shared.leaves[len(masked) :]))
    adapted = [n for n in params if plan.rates.get(n, 0.0) != 0.0]
    targets = list(meta_params.values())
    total = GradientSum(len(targets))
    results = []
    for episode in episodes:  # `del`: no task's tensors may outlive it (they raise the peak)
        fast = {**params, **effective}
        fast = adapt_masked(backbone, objective, fast, m2, adapted, lr, plan, episode)
        logits = functional_call(backbone, fast, (episode.query_x,))
        loss = objective.query_loss(logits, episode.query_y)
        del fast
        results.append((loss.detach(), detached_metrics(objective, logits, episode.query_y)))
        grads = torch.autograd.grad(
            loss / len(episodes), targets + shared.leaves, allow_unused=True
        )
        del loss, logits
        total.add(grads[: len(targets)])
        shared.add(grads[len(targets) :])
        del grads
    shared.backward(targets, total)
    return results, total.by_name(list(meta_params))


def adapt_masked(
    backbone: Backbone,
    objective: MetaObjective,
    fast: Params,
    m2: Params,
    adapted: Sequence[str],
    lr: float,
    plan: SGDSteps,
    episode: Episode,
) -> Params:
    """``plan.steps`` SGD steps on ``fast`` (masked weights already applied): ``E + m2 * h``
    for the names in ``m2``, ``p + h`` for the others, with ``h = -lr * dL/dp``."""
    for _ in range(plan.steps):
        logits = functional_call(backbone, fast, (episode.support_x,))
        loss = objective.support_loss(logits, episode.support_y)
        fast, _ = masked_sgd_step(fast, adapted, loss, lr, m2, plan.create_graph)
    return fast


def masked_sgd_step(
    fast: Params,
    adapted: Sequence[str],
    loss: Tensor,
    lr: float,
    m2: Mapping[str, Tensor],
    create_graph: bool,
    outputs: Sequence[Tensor] = (),
) -> tuple[Params, list[Tensor | None]]:
    """One SGD step of ``loss`` on the ``adapted`` entries of ``fast``: ``E + m2 * h`` for the
    names in ``m2``, ``p + h`` for the others, with ``h = -lr * dL/dp`` (shared by the fused and
    the batched paths). Also returns ``-lr * dL/dy`` for each of ``outputs`` (intermediate
    tensors: the batched path's low-rank layers make their updates from them)."""
    steps = torch.autograd.grad(
        loss,
        [fast[n] for n in adapted] + list(outputs),
        grad_outputs=torch.full_like(loss, -lr),
        create_graph=create_graph,
        allow_unused=True,
    )
    fast = dict(fast)
    for name, step in zip(adapted, steps):
        if step is not None and name in m2:
            fast[name] = torch.addcmul(fast[name], m2[name], step)
        elif step is not None:
            fast[name] = fast[name] + step
    return fast, list(steps[len(adapted) :])
