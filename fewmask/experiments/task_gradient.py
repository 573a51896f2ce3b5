"""Task-gradient probe (the paper's Figure 2): "rapid learning" vs "feature reuse".

During meta-training, for every task, the inner-loop gradient of one layer (default: the last
weight of the feature extractor) is summed over the inner steps and summarised as the mean
absolute entry. Per iteration the value is averaged over the meta-batch. For Meta-ticket it is
divided by the layer's mask density, so it is the mean over *kept* weights (pruned weights have
zero inner gradient); MAML is not normalised. The paper's reading: Meta-ticket's task gradients
stay up while MAML's decay towards zero (MAML learns to reuse features).

A layer the inner loop does not adapt (the body under ANIL) has no inner update to read; for it
the gradient of the support loss at the pre-adaptation parameters (step 0) is recorded. With one
training inner step that is exactly MAML's quantity (the summed gradient is the step-0 one).

Beside it, each iteration, the *head dispersion* of the meta-initial (effective) classifier
weight ``W`` [ways, features]: ``sqrt(mean_c ||w_c - mean_c w_c||^2)``. The feature gradient of
the cross-entropy is ``sum_c (p_c - y_c) w_c = sum_c (p_c - y_c)(w_c - mean w)``, so it is
bounded by this spread (at most ``2 sqrt(ways)`` times it): a feature gradient that decays while
the dispersion shrinks is the head rows collapsing, not necessarily the features being reused.

The authors normalise by the density measured after the score update (one step late); here the
density of the very mask the task was adapted with is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from fewmask.experiments.common import (
    Experiment,
    Variant,
    cell,
    check_choices,
    markdown_table,
    register,
)
from fewmask.experiments.gradient_probe import (
    PARTIAL,
    SAVED,
    Curves,
    finish_curves,
    read_curves,
)
from fewmask.experiments.jobs import Probe
from fewmask.experiments.methods import METHODS, method_patch
from fewmask.experiments.plots import Series, line_chart, tile
from fewmask.options import option


@attrs.frozen
class TaskGradientSettings:
    """Settings of ``fewmask experiment task-gradient``."""

    methods: tuple[str, ...] = option(("maml", "metaticket", "anil"), help="methods to compare")
    inner_lrs: tuple[float, ...] = option(
        (0.01, 0.05, 0.1, 0.4), help="inner learning rates to sweep"
    )
    layer: str | None = option(
        None, help="parameter to probe (default: the last maskable weight of the body)"
    )
    smooth: int = option(50, ge=1, help="moving-average window of the plotted curves")


def _collected(variant: Variant) -> Curves | None:
    """A finished variant's curves (None without results)."""
    run, saved, partial = variant.run, variant.run.path / SAVED, variant.run.path / PARTIAL
    if not run.has_results():
        return None
    if saved.is_file():
        return read_curves(saved)
    if partial.is_file():  # stopped between the meta-test and writing task_gradient.json
        return finish_curves(partial, saved)
    return Curves()


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _tenths(values: Sequence[float]) -> list[str]:
    """Means of the first and the last tenth of ``values`` and their ratio, as table cells."""
    if not values:
        return ["n/a"] * 3
    tenth = max(1, len(values) // 10)
    first, last = sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth
    ratio = f"{last / first:.2f}" if first else "n/a"
    return [f"{first:#.4g}", f"{last:#.4g}", ratio]


def _panels(
    curves: dict[tuple[str, float], list[float]],
    settings: TaskGradientSettings,
    title: str,
    ylabel: str,
) -> Any:
    """One panel per inner learning rate, the methods side by side, tiled in one row."""
    panels = []
    for lr in settings.inner_lrs:
        series = []
        for method in settings.methods:
            values = curves[method, lr]
            if not values:  # not recorded (a variant finished before it was)
                series.append(Series(f"{method} (not recorded)", (float("nan"),), xs=(1.0,)))
                continue
            xs = tuple(float(i + 1) for i in range(len(values)))
            series.append(Series(method, tuple(_smooth(values, settings.smooth)), xs=xs))
        panels.append(line_chart(f"{title}, inner lr {lr:g}", "iteration", ylabel, series))
    return tile(panels, columns=min(4, len(panels)))


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
    probes = []
    for variant in variants:
        experiment.record(variant.run.path / SAVED, variant.run.path / PARTIAL)
        settings_of = {"run_dir": str(variant.run.path), "layer": settings.layer}
        probes.append(Probe("task-gradient", {**settings_of, "label": variant.label}))
    found = experiment.run_variants(variants, probes)

    rows, gradients, dispersions, summary = [], {}, {}, []
    writer = experiment.writer
    for (method, lr), variant, results in zip(grid, variants, found):
        curves = _collected(variant) or Curves()
        gradients[method, lr], dispersions[method, lr] = (
            curves.task_gradient,
            curves.head_dispersion,
        )
        for i, value in enumerate(curves.task_gradient):
            writer.add_scalar(f"task_gradient/{variant.label}", value, i + 1)
        for i, value in enumerate(curves.head_dispersion):
            writer.add_scalar(f"head_dispersion/{variant.label}", value, i + 1)
        spread = curves.head_dispersion
        rows += [
            {
                "method": method,
                "inner_lr": lr,
                "iteration": i + 1,
                "task_gradient": value,
                "head_dispersion": spread[i] if i < len(spread) else None,  # None: empty cell
            }
            for i, value in enumerate(curves.task_gradient)
        ]
        summary.append(
            [
                method,
                f"{lr:g}",
                settings.layer or "last body weight",
                *_tenths(curves.task_gradient),
                *_tenths(spread),
                cell(results),
            ]
        )
    markdown = (
        "Mean |inner gradient| (density-normalised for Meta-ticket; the step-0 support gradient "
        "for a layer the inner loop does not adapt, as under ANIL) and the head dispersion "
        "sqrt(mean_c ||w_c - mean w||^2) of the meta-initial classifier, averaged over the "
        "first and the last tenth of meta-training\n\n"
        + markdown_table(
            [
                "method",
                "inner lr",
                "layer",
                "gradient first 10%",
                "last 10%",
                "last/first",
                "head dispersion first 10%",
                "last 10%",
                "last/first",
                "test acc %",
            ],
            summary,
        )
    )
    experiment.write_table("task_gradient", rows, markdown)
    chart = tile(
        [
            _panels(gradients, settings, "task gradient", "mean |inner gradient|"),
            _panels(dispersions, settings, "head dispersion", "head row spread"),
        ],
        columns=1,
    )
    experiment.write_image("task_gradient", chart)
    return rows
