"""Task-gradient probe (the paper's Figure 2): "rapid learning" vs "feature reuse".

During meta-training, for every task, the inner-loop gradient of one layer (default: the last
weight of the feature extractor) is summed over the inner steps and summarised as the mean
absolute entry. Per iteration the value is averaged over the meta-batch. For Meta-ticket it is
divided by the layer's mask density, so it is the mean over *kept* weights (pruned weights have
zero inner gradient); MAML is not normalised. The paper's reading: Meta-ticket's task gradients
stay up while MAML's decay towards zero (MAML learns to reuse features).

The authors normalise by the density measured after the score update (one step late); here the
density of the very mask the task was adapted with is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.errors import ConfigError
from fewmask.experiments.common import (
    Experiment,
    Variant,
    check_choices,
    markdown_table,
    percent,
    register,
    result_row,
)
from fewmask.experiments.methods import METHODS, method_patch
from fewmask.experiments.plots import Series, line_chart, tile
from fewmask.interfaces import Backbone, InnerOptimizer, Masker, Params
from fewmask.options import option
from fewmask.progress import Progress


class TaskGradientProbe(InnerOptimizer):
    """Wraps a plain-SGD inner optimizer; while ``recording``, keeps each task's probe statistic.

    The gradient summed over the inner steps is recovered exactly from the update:
    ``sum_t g_t = (p_0 - p_S) / lr`` for the probed parameter, which holds when the base's steps
    are plain SGD (its :meth:`~fewmask.interfaces.InnerOptimizer.plain_sgd` says so; ``attach``
    checks it).

    The probe keeps ``plain_sgd``'s default (None) on purpose: the engine then runs its exact
    per-task path, which calls :meth:`adapt` for every task. The fused SGD path reimplements the
    steps without calling ``adapt``, and the probe must see every step.
    """

    def __init__(self, base: InnerOptimizer, layer: str, masker: Masker):
        self.base, self.layer, self.masker = base, layer, masker
        self.lr = 0.0  # the probed parameter's inner rate, set by attach()
        self.recording = False
        self.values: list[float] = []

    def attach(self, backbone: Backbone) -> None:
        self.base.attach(backbone)
        plan = self.base.plain_sgd(training=True)
        if plan is None:
            raise ConfigError(
                [
                    "$.inner.name: the task-gradient probe recovers inner gradients from plain "
                    f"SGD steps, which {type(self.base).__name__} does not take"
                ]
            )
        self.lr = plan.rates.get(self.layer, 0.0)
        if not self.lr:
            raise ConfigError(
                [f"$.experiment.layer: {self.layer!r} is not adapted in the inner loop"]
            )

    def adapt(
        self, params: Params, support_loss: Callable[[Params], Tensor], *, training: bool
    ) -> Params:
        fast = self.base.adapt(params, support_loss, training=training)
        if self.recording:
            self.values.append(self.statistic(params, fast))
        return fast

    def statistic(self, before: Params, after: Params) -> float:
        """Mean |summed inner gradient| of the layer, over kept weights for a masked layer."""
        with torch.no_grad():
            summed = (before[self.layer] - after[self.layer]) / self.lr
            value = summed.abs().mean()
            mask = self.masker.masks().get(self.layer)
            if mask is not None:
                value = value / mask.to(summed.dtype).mean().clamp_min(1e-12)
        return value.item()

    def pop_mean(self) -> float:
        """Mean over the tasks recorded since the last call, and forget them."""
        values, self.values = self.values, []
        return sum(values) / len(values)


def default_layer(backbone: Backbone) -> str:
    """The last maskable weight of the body: the feature extractor's last layer."""
    groups = backbone.parameter_groups()
    body = [n for n in backbone.maskable_parameter_names() if groups.get(n) == "body"]
    if not body:
        raise ConfigError(["$.experiment.layer: the backbone has no maskable body weight to probe"])
    return body[-1]


@attrs.frozen
class TaskGradientSettings:
    """Settings of ``fewmask experiment task-gradient``."""

    methods: tuple[str, ...] = option(("maml", "metaticket"), help="methods to compare")
    inner_lrs: tuple[float, ...] = option((0.1, 0.4, 0.8), help="inner learning rates to sweep")
    layer: str | None = option(
        None, help="parameter to probe (default: the last maskable weight of the body)"
    )
    smooth: int = option(50, ge=1, help="moving-average window of the plotted curves")


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _probe_run(
    experiment: Experiment, variant: Variant, layer: str | None
) -> tuple[list[float], dict[str, Any]]:
    """Meta-train one variant with the probe on; its values per iteration and test results."""
    run = variant.run
    saved = run.path / "task_gradient.json"  # this experiment's own file in the run folder
    if saved.is_file() and run.has_results():
        experiment.check_saved(variant)
        return json.loads(saved.read_text()), run.read_results()
    run.checkpoint.unlink(missing_ok=True)  # the probe needs the whole run: start over
    trainer = experiment.build(variant)
    layer = layer or default_layer(trainer.backbone)
    probe = TaskGradientProbe(trainer.engine.inner, layer, trainer.masker)
    try:
        probe.attach(trainer.backbone)
    except ConfigError as exc:
        raise ConfigError([f"{line} (variant {variant.label})" for line in exc.problems]) from None
    trainer.engine.inner, probe.recording = probe, True  # the engine adapts through the probe
    values = []
    with Progress(
        trainer.train_config.iterations, variant.label, enabled=experiment.progress
    ) as bar:
        while trainer.iteration < trainer.train_config.iterations:
            trainer.train_step()
            values.append(probe.pop_mean())
            experiment.writer.add_scalar(f"task_gradient/{variant.label}", values[-1], len(values))
            bar.update(trainer.iteration)
    probe.recording = False
    trainer.save()
    experiment.record(saved)
    saved.write_text(json.dumps(values))
    return values, trainer.test()


@register("task-gradient", TaskGradientSettings, "inner-loop gradient magnitude over training")
def run_task_gradient(
    experiment: Experiment, settings: TaskGradientSettings
) -> list[dict[str, Any]]:
    check_choices(settings.methods, METHODS, "methods")
    grid = [(m, lr) for m in settings.methods for lr in settings.inner_lrs]
    variants = []
    for method, lr in grid:
        patch = method_patch(method, experiment.base)
        patch["inner"]["options"]["lr"] = lr
        variants.append(experiment.variant(f"{method}-innerlr{lr:g}", patch))
    experiment.validate(variants)

    rows, curves, summary = [], {}, []
    for (method, lr), variant in zip(grid, variants):
        values, results = _probe_run(experiment, variant, settings.layer)
        curves[method, lr] = values
        rows += [
            {"method": method, "inner_lr": lr, "iteration": i + 1, "task_gradient": v}
            for i, v in enumerate(values)
        ]
        tenth = max(1, len(values) // 10)
        first, last = values[:tenth], values[-tenth:]
        summary.append(
            [
                method,
                f"{lr:g}",
                settings.layer or "last body weight",
                f"{sum(first) / len(first):#.4g}",
                f"{sum(last) / len(last):#.4g}",
                f"{sum(last) / len(last) / (sum(first) / len(first)):.2f}",
                percent(result_row(results)["accuracy"], results["ci95"]),
            ]
        )
    markdown = (
        "Mean |inner gradient| (density-normalised for Meta-ticket), averaged over the first "
        "and the last tenth of meta-training\n\n"
        + markdown_table(
            ["method", "inner lr", "layer", "first 10%", "last 10%", "last/first", "test acc %"],
            summary,
        )
    )
    experiment.write_table("task_gradient", rows, markdown)
    panels = [  # one panel per inner learning rate, the methods side by side
        line_chart(
            f"inner lr {lr:g}",
            "iteration",
            "mean |inner gradient|",
            [
                Series(
                    m,
                    tuple(_smooth(curves[m, lr], settings.smooth)),
                    xs=tuple(float(i + 1) for i in range(len(curves[m, lr]))),
                )
                for m in settings.methods
            ],
        )
        for lr in settings.inner_lrs
    ]
    chart = tile(panels, columns=min(3, len(panels)))
    experiment.write_image("task_gradient", chart)
    return rows
