"""The batched path of :class:`fewmask.engine.Engine` (``EngineOptions.batched``).

The per-task loop runs the whole network once per task and inner step, and once per task for
the query loss and the meta-gradient: on small models most of a meta-iteration is per-operation
overhead, paid ``T`` times. Here every task of the meta-batch goes through one forward and one
backward (:mod:`fewmask.engine.task_channels`: per-task parameters as a leading dimension,
activations side by side in the channel dimension, per-task BatchNorm statistics):

- fast weights start as the shared parameters expanded to ``T`` copies (a view, no copy);
- the support loss is the sum of the tasks' losses; as no operation mixes tasks, its gradient
  w.r.t. the ``(T, ...)`` fast weights holds each task's own gradient, with every second-order
  term, and one ``autograd.grad`` gives all of them;
- as in :mod:`fewmask.engine.fused`, the steps iterate on the masked weights ``E = W * m``
  (``E <- E + m2 * h``, ``h = -lr * dL/dE`` by seeding the backward with ``-lr``), and ``E``
  and ``m2 = m * m`` are computed once per meta-batch, as detached leaves whose summed
  gradients one final backward carries into the scores and weights: no weight-sized work is
  done per task except the update itself, which MAML does too;
- the meta-loss is the mean of the tasks' query losses, differentiated once.

Nothing here reads a tensor's value on the host, so the step stays capturable by
``train.cuda_graph``. Every derivative is the per-task loop's; only rounding differs (checked
in float64 by ``tests/test_engine_batched.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fewmask.engine.exact import GradientSum, TaskResult, detached_metrics
from fewmask.engine.fused import SharedLeaves, _shared_items, masked_sgd_step, single_rate
from fewmask.engine.low_rank import LowRankLinears, linear_weights, low_rank_layers
from fewmask.engine.task_channels import pack, packed_forward, unsupported
from fewmask.interfaces import Backbone, Episode, InnerOptimizer, MetaObjective, SGDSteps


def batch_problem(backbone: Backbone, plan: SGDSteps | None, lr: float | None) -> str | None:
    """Why the batched path cannot run this model and inner optimizer, or None if it can."""
    if plan is None:
        return "the inner optimizer is not plain SGD (its plain_sgd() declines)"
    if lr is None:
        return "the inner optimizer's learning rates are not one single non-zero rate"
    return unsupported(backbone)


AUTO_MAX_PARAMETERS = 1_000_000
"""``train.engine: auto`` batches a built-in MLP of at most this many parameters at every
meta-step. Measured on one CPU thread (``benchmarks/batched_step.py``, docs/performance.md): the
glyph MLP (0.25M parameters) 1.1-1.2x faster batched even where its layers stay dense."""

AUTO_LOW_RANK_SHARE = 0.9
"""A larger MLP is batched on the meta-steps where the low-rank form covers at least this share
of its linear weights' entries (:func:`~fewmask.engine.low_rank.low_rank_layers`): the 5-MLP's
MAML 2.0-2.3x faster; where its big masked layer stays dense (Meta-ticket at 15 queries), 0.8x."""


def batches(backbone: Backbone, inner: InnerOptimizer) -> bool:
    """Whether the batched path applies to ``backbone`` with ``inner`` (attached here)."""
    inner.attach(backbone)
    plan = inner.plain_sgd(training=True)
    return batch_problem(backbone, plan, single_rate(plan)) is None


def batching_pays(backbone: Backbone, inner: InnerOptimizer) -> bool:
    """Whether ``train.engine: auto`` may batch: the batched path applies and the network has no
    convolutions (an MLP; on Conv4 grouped convolutions were measured slower on the CPU). Which
    meta-steps it batches, :func:`batching_pays_here` decides."""
    dense = not any(isinstance(m, torch.nn.Conv2d) for m in backbone.modules())
    return dense and batches(backbone, inner)


def batching_pays_here(
    backbone: Backbone, masked: Sequence[str], episode: Episode, steps: int
) -> bool:
    """``train.engine: auto``'s choice for one meta-step of such episodes: batched for an MLP
    of at most :data:`AUTO_MAX_PARAMETERS` parameters, or where the low-rank form covers at
    least :data:`AUTO_LOW_RANK_SHARE` of the linear weights."""
    if sum(p.numel() for p in backbone.parameters()) <= AUTO_MAX_PARAMETERS:
        return True
    linears = {name: module.weight.numel() for name, module in linear_weights(backbone).items()}
    low = low_rank_layers(backbone, masked, len(episode.support_x), len(episode.query_x), steps)
    covered = sum(linears[n] for n in low)
    return covered >= AUTO_LOW_RANK_SHARE * sum(linears.values())


def same_shapes(episodes: Sequence[Episode]) -> bool:
    """Whether every episode has the first one's tensor shapes (they can be stacked)."""
    first = [t.shape for t in episodes[0]]
    return all([t.shape for t in e] == first for e in episodes[1:])


def batched_meta_gradient(
    backbone: Backbone,
    masks: Mapping[str, Tensor],
    plan: SGDSteps,
    lr: float,
    objective: MetaObjective,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
) -> tuple[list[TaskResult], dict[str, Tensor]]:
    """Per-task results and the gradient of the mean query loss w.r.t. ``meta_params``.

    ``lr`` is the plan's single non-zero rate; parameters whose rate is 0 are not adapted. The
    episodes must have equal shapes (:func:`same_shapes`).
    """
    tasks = len(episodes)
    params = dict(backbone.named_parameters())
    masks = {n: m for n, m in masks.items() if n in params}
    masked = list(masks)
    shared = SharedLeaves(_shared_items(params, masks, not plan.create_graph))
    effective = dict(zip(masked, shared.leaves[: len(masked)]))
    m2 = dict(zip(masked, shared.leaves[len(masked) :]))
    adapted = [n for n in params if plan.rates.get(n, 0.0) != 0.0]
    first = episodes[0]
    shared_names = low_rank_layers(
        backbone, masked, len(first.support_x), len(first.query_x), plan.steps
    )
    fast = {
        n: p if n in shared_names else p.expand(tasks, *p.shape)
        for n, p in {**params, **effective}.items()
    }
    low_rank = LowRankLinears(fast, shared_names, adapted, m2, tasks)
    dense = [n for n in adapted if n not in shared_names]
    support_x = pack(torch.stack([e.support_x for e in episodes]))
    for _ in range(plan.steps):
        logits = packed_forward(backbone, fast, support_x, tasks, low_rank)
        loss = torch.stack(
            [objective.support_loss(logits[t], e.support_y) for t, e in enumerate(episodes)]
        ).sum()
        fast, steps = masked_sgd_step(
            fast, dense, loss, lr, m2, plan.create_graph, low_rank.outputs()
        )
        low_rank.record_step(steps, plan.create_graph)
    query_x = pack(torch.stack([e.query_x for e in episodes]))
    logits = packed_forward(backbone, fast, query_x, tasks, low_rank)
    low_rank.forget()
    del fast, low_rank
    losses = [objective.query_loss(logits[t], e.query_y) for t, e in enumerate(episodes)]
    results = [
        (loss.detach(), detached_metrics(objective, logits[t], e.query_y))
        for t, (loss, e) in enumerate(zip(losses, episodes))
    ]
    targets = list(meta_params.values())
    total = GradientSum(len(targets))
    meta_loss = torch.stack(losses).sum() / tasks
    grads = torch.autograd.grad(meta_loss, targets + shared.leaves, allow_unused=True)
    del meta_loss, losses, logits
    total.add(grads[: len(targets)])
    shared.add(grads[len(targets) :])
    del grads
    shared.backward(targets, total)
    return results, total.by_name(list(meta_params))
