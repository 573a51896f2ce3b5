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
from collections.abc import Callable, Mapping
from pathlib import Path
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
from fewmask.trainer import CHECKPOINT, RESULTS


class TaskGradientProbe(InnerOptimizer):
    """Wraps an inner optimizer; while ``recording``, keeps each task's probe statistic.

    The gradient summed over the inner steps is recovered exactly from the update:
    ``sum_t g_t = (p_0 - p_S) / lr`` for the probed parameter.
    """

    def __init__(self, base: InnerOptimizer, layer: str, masker: Masker):
        self.base, self.layer, self.masker = base, layer, masker
        self.steps, self.test_steps, self.first_order = (
            base.steps,
            base.test_steps,
            base.first_order,
        )
        self.recording = False
        self.values: list[float] = []

    def learning_rates(self, backbone: Backbone) -> dict[str, float]:
        return self.base.learning_rates(backbone)

    def adapt(
        self,
        params: Params,
        support_loss: Callable[[Params], Tensor],
        learning_rates: Mapping[str, float],
        steps: int,
        create_graph: bool,
    ) -> Params:
        fast = self.base.adapt(params, support_loss, learning_rates, steps, create_graph)
        if self.recording:
            self.values.append(self.statistic(params, fast, learning_rates[self.layer]))
        return fast

    def statistic(self, before: Params, after: Params, lr: float) -> float:
        """Mean |summed inner gradient| of the layer, over kept weights for a masked layer."""
        with torch.no_grad():
            summed = (before[self.layer] - after[self.layer]) / lr
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
    run_dir = Path(variant.data["run_dir"])
    saved = run_dir / "task_gradient.json"
    if saved.is_file() and (run_dir / RESULTS).is_file():
        experiment.check_saved(variant)
        return json.loads(saved.read_text()), json.loads((run_dir / RESULTS).read_text())
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # the probe needs the whole run: start over
    trainer = experiment.build(variant)
    layer = layer or default_layer(trainer.backbone)
    if not trainer.learning_rates.get(layer):
        raise ConfigError(
            [f"$.experiment.layer: {layer!r} is not adapted in the inner loop of {variant.label}"]
        )
    probe = TaskGradientProbe(trainer.inner, layer, trainer.masker)
    trainer.inner, probe.recording = probe, True
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
