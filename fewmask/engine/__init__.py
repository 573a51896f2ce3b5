"""The meta-gradient engine: one meta-iteration's loss, metrics and gradients, and evaluation.

:class:`Engine` is the one entry::

    engine = Engine(backbone, masker, inner, objective)    # masker attached to backbone
    result = engine.meta_step(episodes)                    # StepResult(loss, metrics, grads)
    loss, metrics = engine.evaluate(episode)               # after test-time adaptation

``meta_step`` returns the mean-over-tasks gradients of the objective's meta-parameters by name
and touches no ``.grad``. Under ``torchrun`` it differentiates this rank's share of the episodes
and all-reduces (:mod:`fewmask.runtime.distributed`), so every rank gets the same result.

Paths: :mod:`~fewmask.engine.exact` (per task, the reference) and, with
:class:`EngineOptions`, :mod:`~fewmask.engine.fused` (plain-SGD inner loops),
:mod:`~fewmask.engine.batched` (all tasks in one forward and backward) and
:mod:`~fewmask.engine.batchnorm` (a cheaper BatchNorm double backward); they change results only
by float rounding (measured in ``benchmarks/meta_step.py`` and ``benchmarks/batched_step.py``,
checked in float64 by ``tests/test_engine_paths.py`` and ``tests/test_engine_batched.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import nullcontext

import attrs
import torch
from torch import Tensor

from fewmask.engine.batched import (
    batch_problem,
    batched_meta_gradient,
    batching_pays_here,
    same_shapes,
)
from fewmask.engine.batchnorm import fused_batchnorm
from fewmask.engine.exact import (
    TaskResult,
    evaluate_episode,
    exact_meta_gradient,
    frozen_masks,
)
from fewmask.engine.fused import fused_meta_gradient, single_rate
from fewmask.errors import FewmaskWarning
from fewmask.interfaces import Backbone, Episode, InnerOptimizer, Masker, MetaObjective, Params
from fewmask.runtime import distributed


@attrs.frozen
class EngineOptions:
    """Opt-in speed levers of :meth:`Engine.meta_step`; each changes results only by rounding.

    Attributes:
        fused_sgd: for inner optimizers whose ``plain_sgd()`` reports plain SGD steps with one
            learning rate, adapt the masked weights directly with masks computed once per
            meta-batch (:mod:`fewmask.engine.fused`); others take the per-task path.
        fused_batchnorm: batch-statistics BatchNorm with a hand-written double backward
            (:mod:`fewmask.engine.batchnorm`), several times cheaper than PyTorch's composite one.
        channels_last: 4-D images in ``torch.channels_last`` memory format (needs
            ``fused_batchnorm``: PyTorch's channels-last CPU BatchNorm loses precision; not
            used by the batched path).
        batched: every task of the meta-batch in one forward and one backward
            (:mod:`fewmask.engine.batched`), for plain-SGD inner optimizers with one rate and
            the backbones :func:`fewmask.engine.task_channels.unsupported` accepts; other models
            take the other levers' path, announced once by a :class:`FewmaskWarning`.
        batched_where_faster: with ``batched``, batch only the meta-steps where it was
            measured faster (:func:`fewmask.engine.batched.batching_pays_here`: small MLPs,
            and larger ones whose linear layers take the low-rank form), the others take the
            per-task path quietly; ``train.engine: auto``.
    """

    fused_sgd: bool = False
    fused_batchnorm: bool = False
    channels_last: bool = attrs.field(default=False)
    batched: bool = False
    batched_where_faster: bool = False

    @channels_last.validator
    def _check(self, attribute, value: bool) -> None:
        if value and not self.fused_batchnorm:
            raise ValueError("EngineOptions.channels_last needs fused_batchnorm=True")

    @classmethod
    def fast(cls) -> EngineOptions:
        """Every lever on."""
        return cls(fused_sgd=True, fused_batchnorm=True, channels_last=True)

    @classmethod
    def batched_path(cls) -> EngineOptions:
        """All tasks at once (``train.engine: batched``), with the fused BatchNorm."""
        return cls(fused_batchnorm=True, batched=True)

    @classmethod
    def auto(cls) -> EngineOptions:
        """``train.engine: auto`` on a model the batched path applies to: batched on the
        meta-steps where it pays, the per-task path on the others."""
        return cls(fused_batchnorm=True, batched=True, batched_where_faster=True)


@attrs.frozen
class StepResult:
    """One meta-step over a batch of tasks; every value is a mean over the tasks.

    Attributes:
        loss: the mean query loss (a detached scalar tensor).
        metrics: the objective's metrics by name (detached scalar tensors).
        grads: the gradient of ``loss`` w.r.t. each meta-parameter, by name; a meta-parameter
            the loss does not depend on is left out.
    """

    loss: Tensor
    metrics: dict[str, Tensor]
    grads: dict[str, Tensor]


class Engine:
    """Meta-gradients and evaluation of ``objective`` for ``backbone`` masked by ``masker``.

    Description:
        Attaches ``inner`` to ``backbone`` (its per-parameter learning rates are fixed then) and
        takes the meta-parameters from ``objective.meta_parameters(backbone, masker)``; the
        masker must already be attached to the backbone. Episodes may hold uint8 or float
        images on any device: each task is moved to the backbone's device and dtype.

    Args:
        backbone, masker, inner, objective: the components of the meta-learner.
        options: speed levers (default: none, the exact per-task path).

    Example::

        engine = Engine(backbone, masker, inner, objective)
        result = engine.meta_step(episodes)
        result.grads["features.1.linear.weight"]
    """

    def __init__(
        self,
        backbone: Backbone,
        masker: Masker,
        inner: InnerOptimizer,
        objective: MetaObjective,
        options: EngineOptions | None = None,
    ):
        self.backbone, self.masker, self.inner, self.objective = backbone, masker, inner, objective
        self.options = options or EngineOptions()
        # channels-last loses fp32 precision on narrow convolutions (docs/performance.md)
        self.channels_last = self.options.channels_last and channels_last_pays(backbone)
        inner.attach(backbone)
        self.meta_params = objective.meta_parameters(backbone, masker)
        self._metric_names: list[str] | None = None  # under torchrun: fixed by the first step
        self.batched = self.options.batched and self._batchable()
        self._ragged_announced = False
        self._pays: dict[tuple, bool] = {}  # batching_pays_here by episode shape

    def meta_step(self, episodes: Sequence[Episode]) -> StepResult:
        """Mean query loss, metrics and meta-gradients over ``episodes``; no ``.grad`` touched.

        Under torchrun every rank passes the same episodes and differentiates its share.
        """
        if not episodes:
            raise ValueError("meta_step needs at least one episode")
        device, dtype = self._device_dtype()
        mine = [episodes[i].to(device, dtype) for i in distributed.share(len(episodes))]
        results: list[TaskResult] = []
        grads: dict[str, Tensor] = {}
        if mine:  # a rank may have no task when the batch is smaller than the world
            with distributed.isolated_rng(device):
                results, grads = self._differentiate(mine)
        names = self._agree_metric_names(results)
        means = [torch.stack([loss for loss, _ in results]).mean()] if results else []
        means += [torch.stack([m[n] for _, m in results]).mean() for n in names] if results else []
        if distributed.world_size() == 1:
            return StepResult(means[0], dict(zip(names, means[1:])), grads)
        stats = [m.item() for m in means] or [0.0] * (1 + len(names))
        grads, stats = distributed.reduce_task_means(
            self.meta_params, grads, stats, len(mine), len(episodes)
        )
        values = [torch.tensor(v, dtype=torch.float64) for v in stats]
        return StepResult(values[0], dict(zip(names, values[1:])), grads)

    def evaluate(
        self, episode: Episode, masks: Params | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Query loss and metrics of one episode after the inner loop's test-time adaptation.

        ``masks`` (default: :meth:`frozen_masks`) stay fixed; pass them when evaluating many
        episodes, to compute them once.
        """
        masks = self.frozen_masks() if masks is None else masks
        episode = episode.to(*self._device_dtype())
        return evaluate_episode(self.backbone, self.inner, self.objective, masks, episode)

    def frozen_masks(self) -> Params:
        """The masker's current masks, detached (constant during evaluation)."""
        return frozen_masks(self.masker)

    def _batchable(self) -> bool:
        """Whether the batched path applies; if not, say why once."""
        plan = self.inner.plain_sgd(training=True)
        problem = batch_problem(self.backbone, plan, single_rate(plan))
        if problem:
            warnings.warn(
                f"batched engine: {problem}; meta-steps take the unbatched path",
                FewmaskWarning,
                stacklevel=3,
            )
        return problem is None

    def _differentiate(
        self, episodes: Sequence[Episode]
    ) -> tuple[list[TaskResult], dict[str, Tensor]]:
        options = self.options
        if self.batched:
            plan = self.inner.plain_sgd(training=True)
            rate = single_rate(plan)
            if (
                plan is not None
                and rate is not None
                and self._stackable(episodes)
                and self._batching_pays(episodes[0], plan.steps)
            ):
                with fused_batchnorm() if options.fused_batchnorm else nullcontext():
                    return batched_meta_gradient(
                        self.backbone,
                        self.masker.masks(),
                        plan,
                        rate,
                        self.objective,
                        self.meta_params,
                        episodes,
                    )
        if self.channels_last:
            episodes = _ChannelsLast(episodes)
        plan = self.inner.plain_sgd(training=True) if options.fused_sgd else None
        rate = single_rate(plan)
        with fused_batchnorm() if options.fused_batchnorm else nullcontext():
            if plan is None or rate is None:
                return exact_meta_gradient(
                    self.backbone,
                    self.masker,
                    self.inner,
                    self.objective,
                    self.meta_params,
                    episodes,
                )
            return fused_meta_gradient(
                self.backbone,
                self.masker.masks(),
                plan,
                rate,
                self.objective,
                self.meta_params,
                episodes,
            )

    def _batching_pays(self, episode: Episode, steps: int) -> bool:
        if not self.options.batched_where_faster:
            return True
        key = (tuple(episode.support_x.shape), tuple(episode.query_x.shape), steps)
        if key not in self._pays:
            masked = list(self.masker.masks())
            self._pays[key] = batching_pays_here(self.backbone, masked, episode, steps)
        return self._pays[key]

    def _stackable(self, episodes: Sequence[Episode]) -> bool:
        if same_shapes(episodes):
            return True
        if not self._ragged_announced:
            self._ragged_announced = True
            warnings.warn(
                "batched engine: the meta-batch's episodes differ in shape; such meta-steps "
                "take the unbatched path",
                FewmaskWarning,
                stacklevel=4,
            )
        return False

    def _agree_metric_names(self, results: list[TaskResult]) -> list[str]:
        """The metric names; under torchrun rank 0's (it always has a task), sent once."""
        if distributed.world_size() == 1:
            return list(results[0][1])
        if self._metric_names is None:
            self._metric_names = distributed.broadcast_object(
                list(results[0][1]) if results else []
            )
        return self._metric_names

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(iter(self.backbone.parameters()))
        return param.device, param.dtype


CHANNELS_LAST_MIN_WIDTH = 16
"""``EngineOptions.channels_last`` applies only when every convolution has at least this many
output channels. Below it, PyTorch's channels-last BatchNorm reductions on the CPU add each
channel's values one by one, and a ResNet-12 with 4-8 channels got 27x the exact engine's fp32
error (8-8-16-16: 1.5x; 16 and up: at most the exact engine's), measured with
``benchmarks/fp32_error.py``."""


def channels_last_pays(backbone: torch.nn.Module) -> bool:
    """Whether channels-last keeps fp32 precision here: every Conv2d is wide enough."""
    convs = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    return all(m.out_channels >= CHANNELS_LAST_MIN_WIDTH for m in convs)


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


__all__ = ["Engine", "EngineOptions", "StepResult", "channels_last_pays", "distributed"]
