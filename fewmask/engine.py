"""The functional core of one meta-iteration: masked forward, task adaptation, meta-gradient.

Everything here is a plain function over ``{name: tensor}`` dicts, run per task (the way the
authors and learn2learn do it), so second-order terms and BatchNorm are exact. The mask enters as
``weight * mask``: the inner gradient w.r.t. a masked weight is ``mask * dL/dW_eff`` (pruned
weights never move), and the query loss reaches the scores through every forward that used them.

:class:`EngineOptions` switches on speed levers that change results only by float rounding
(measured in ``benchmarks/meta_step.py``, checked in float64 by ``tests/test_engine_paths.py``);
all are off by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from fewmask.batchnorm import fused_batchnorm
from fewmask.fused import accumulate, fused_meta_gradient, plain_sgd_rate
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


@attrs.frozen
class EngineOptions:
    """Opt-in speed levers of :func:`meta_gradient`; each changes results only by float rounding.

    Attributes:
        fused_sgd: for plain-SGD inner optimizers with one learning rate, adapt the masked
            weights directly with masks computed once per meta-batch (:mod:`fewmask.fused`);
            other inner optimizers take the per-task path.
        fused_batchnorm: batch-statistics BatchNorm with a hand-written double backward
            (:mod:`fewmask.batchnorm`), several times cheaper than PyTorch's composite one.
        channels_last: 4-D images in ``torch.channels_last`` memory format (needs
            ``fused_batchnorm``: PyTorch's channels-last CPU BatchNorm loses precision).
    """

    fused_sgd: bool = False
    fused_batchnorm: bool = False
    channels_last: bool = attrs.field(default=False)

    @channels_last.validator
    def _check(self, attribute, value: bool) -> None:
        if value and not self.fused_batchnorm:
            raise ValueError("EngineOptions.channels_last needs fused_batchnorm=True")

    @classmethod
    def fast(cls) -> EngineOptions:
        """Every lever on."""
        return cls(fused_sgd=True, fused_batchnorm=True, channels_last=True)


def meta_gradient(
    backbone: Backbone,
    masker: Masker,
    inner: InnerOptimizer,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
    learning_rates: Mapping[str, float],
    options: EngineOptions | None = None,
) -> TaskStats:
    """Add the gradient of the mean query loss over ``episodes`` to ``meta_params[*].grad``.

    Each task is adapted and differentiated on its own, so only one task's graph is alive at a
    time; its gradient is divided by the number of tasks (the mean meta-loss). ``options``
    (default: none) selects the speed levers of :class:`EngineOptions`.
    """
    options = options or EngineOptions()
    if options.channels_last:
        episodes = _ChannelsLast(episodes)
    rate = plain_sgd_rate(inner, learning_rates) if options.fused_sgd else None
    with fused_batchnorm() if options.fused_batchnorm else nullcontext():
        if rate is None:
            results = _per_task(backbone, masker, inner, meta_params, episodes, learning_rates)
        else:
            results = fused_meta_gradient(
                backbone, masker.masks(), rate, learning_rates, inner, meta_params, episodes
            )
    losses, accuracies = zip(*results)
    return TaskStats(torch.stack(losses).mean().item(), torch.stack(accuracies).mean().item())


def _per_task(
    backbone: Backbone,
    masker: Masker,
    inner: InnerOptimizer,
    meta_params: Mapping[str, Tensor],
    episodes: Sequence[Episode],
    learning_rates: Mapping[str, float],
) -> list[tuple[Tensor, Tensor]]:
    targets = list(meta_params.values())
    results = []
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
        accumulate(targets, torch.autograd.grad(loss / len(episodes), targets, allow_unused=True))
        results.append((loss.detach(), (logits.argmax(1) == episode.query_y).float().mean()))
    return results


class _ChannelsLast(Sequence[Episode]):
    """Episodes with 4-D images in channels-last format, converted one at a time on access."""

    def __init__(self, episodes: Sequence[Episode]):
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i):  # type: ignore[override]
        return Episode(*(_channels_last(t) for t in self.episodes[i]))


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


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
