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

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.errors import ConfigError, closest_name
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
from fewmask.runtime.progress import Progress
from fewmask.training.trainer import Trainer

SAVED = "task_gradient.json"  # a finished variant's curves, in its run folder
PARTIAL = "task_gradient.partial.json"  # the curves up to the last checkpoint


class TaskGradientProbe(InnerOptimizer):
    """Wraps a plain-SGD inner optimizer; while ``recording``, keeps each task's probe statistic.

    For a layer the base adapts, the gradient summed over the inner steps is recovered exactly
    from the update: ``sum_t g_t = (p_0 - p_S) / lr``, which holds when the base's steps are
    plain SGD (its :meth:`~fewmask.interfaces.InnerOptimizer.plain_sgd` says so; ``attach``
    checks it). For a layer it leaves alone (rate 0, e.g. the body under ANIL), the support
    loss's gradient at the pre-adaptation parameters (step 0) is taken instead, in a separate
    ``autograd.grad`` that leaves the meta-gradient's graph as it is; with one inner step both
    are the same quantity.

    The probe keeps ``plain_sgd``'s default (None) on purpose: the engine then runs its exact
    per-task path, which calls :meth:`adapt` for every task. The fused SGD path reimplements the
    steps without calling ``adapt``, and the probe must see every step.
    """

    def __init__(self, base: InnerOptimizer, layer: str, masker: Masker):
        self.base, self.layer, self.masker = base, layer, masker
        self.lr = 0.0  # the probed parameter's inner rate, set by attach(); 0: step-0 gradient
        self.recording = False
        self.values: list[float] = []

    def attach(self, backbone: Backbone) -> None:
        self.base.attach(backbone)
        names = [name for name, _ in backbone.named_parameters()]
        if self.layer not in names:
            close = closest_name(self.layer, names)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigError(
                [f"$.experiment.layer: {self.layer!r} is not a parameter of the backbone{hint}"]
            )
        plan = self.base.plain_sgd(training=True)
        if plan is None:
            raise ConfigError(
                [
                    "$.inner.name: the task-gradient probe recovers inner gradients from plain "
                    f"SGD steps, which {type(self.base).__name__} does not take"
                ]
            )
        self.lr = plan.rates.get(self.layer, 0.0)

    def adapt(
        self, params: Params, support_loss: Callable[[Params], Tensor], *, training: bool
    ) -> Params:
        step0 = None
        if self.recording and not self.lr:
            step0 = self.step0_gradient(params, support_loss)
        fast = self.base.adapt(params, support_loss, training=training)
        if self.recording:
            grad = step0 if step0 is not None else self.summed_gradient(params, fast)
            self.values.append(self.statistic(grad))
        return fast

    def summed_gradient(self, before: Params, after: Params) -> Tensor:
        """The layer's inner gradient summed over the steps, from the plain-SGD update."""
        with torch.no_grad():
            return (before[self.layer] - after[self.layer]).detach() / self.lr

    def step0_gradient(self, params: Params, support_loss: Callable[[Params], Tensor]) -> Tensor:
        """The support loss's gradient w.r.t. the layer at ``params`` (detached)."""
        weight = params[self.layer]
        if not weight.requires_grad:  # e.g. frozen weights: differentiate a detached copy
            weight = weight.detach().requires_grad_()
            params = {**params, self.layer: weight}
        with torch.enable_grad():  # retain_graph: the meta-gradient's graph is not freed
            (grad,) = torch.autograd.grad(support_loss(params), weight, retain_graph=True)
        return grad.detach()

    def statistic(self, grad: Tensor) -> float:
        """Mean |grad| of the layer, over kept weights for a masked layer."""
        with torch.no_grad():
            value = grad.abs().mean()
            mask = self.masker.masks().get(self.layer)
            if mask is not None:
                value = value / mask.to(grad.dtype).mean().clamp_min(1e-12)
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


def classifier_weight(backbone: Backbone) -> str:
    """The name of the classifier's weight matrix (``get_classifier()``'s, by identity)."""
    matrices = {id(p) for p in backbone.get_classifier().parameters() if p.dim() >= 2}
    for name, param in backbone.named_parameters():
        if id(param) in matrices:
            return name
    raise ConfigError(["$.backbone: its classifier has no weight matrix to measure"])


def effective_weight(backbone: Backbone, masker: Masker, name: str) -> Tensor:
    """Parameter ``name`` as the forward uses it (masked if the masker masks it), detached."""
    with torch.no_grad():
        weight = dict(backbone.named_parameters())[name].detach()
        mask = masker.masks().get(name)
        return weight if mask is None else weight * mask.to(weight.dtype)


def head_dispersion(weight: Tensor) -> float:
    """``sqrt(mean_c ||w_c - mean_c w_c||^2)`` over the rows (classes) of a classifier weight."""
    with torch.no_grad():
        rows = weight.detach().flatten(1)
        return (rows - rows.mean(0)).pow(2).sum(1).mean().sqrt().item()


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


@attrs.define
class Curves:
    """One variant's values per iteration; ``head_dispersion`` is empty for a variant that
    finished before it was recorded."""

    task_gradient: list[float] = attrs.Factory(list)
    head_dispersion: list[float] = attrs.Factory(list)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically: a temporary file, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_saved(path: Path) -> Curves:
    """A finished variant's curves; the old format is a plain list of gradient values."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return Curves(data, [])
    return Curves(data["task_gradient"], data.get("head_dispersion", []))


def _resumed(path: Path, iteration: int) -> Curves | None:
    """The curves of the first ``iteration`` iterations from the partial file; None if it does
    not have them (missing, unreadable, or written before that iteration's checkpoint)."""
    if iteration == 0:
        return Curves()
    try:
        data = json.loads(path.read_text())
        curves = Curves(list(data["task_gradient"]), list(data["head_dispersion"]))
        if data["iteration"] < iteration or min(map(len, attrs.astuple(curves))) < iteration:
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    # written before checkpoint.pt: values past an older checkpoint (a crash between the two
    # writes, or checkpoint.prev.pt used) come from the same run and are cut off
    return Curves(curves.task_gradient[:iteration], curves.head_dispersion[:iteration])


def _start(experiment: Experiment, variant: Variant) -> tuple[Trainer, Curves]:
    """The variant's Trainer and the curves so far: resumed from its checkpoint and partial
    file if they agree, otherwise started over."""
    run, partial = variant.run, variant.run.path / PARTIAL
    for tmp in run.path.glob(".task_gradient*.tmp"):  # left by a crash during a write
        tmp.unlink()
    if not partial.is_file():
        run.discard_run()  # a checkpoint without the values before it is of no use
    trainer = experiment.build(variant)  # resumed from the checkpoint if there is one
    curves = _resumed(partial, trainer.iteration)
    if curves is None:
        run.discard_run()
        partial.unlink(missing_ok=True)
        trainer, curves = experiment.build(variant), Curves()
    experiment.record(run.path / SAVED, partial)
    return trainer, curves


def _probe_run(experiment: Experiment, variant: Variant, layer: str | None) -> tuple[Curves, dict]:
    """Meta-train one variant with the probe on (resumed if it was interrupted); its curves
    and test results. A finished variant is read back."""
    run = variant.run
    saved = run.path / SAVED
    if saved.is_file() and run.has_results():
        experiment.check_saved(variant)
        return _read_saved(saved), run.read_results()
    experiment.check_saved(variant)  # a different run in the folder: refused, left as it is
    with run.locked():
        trainer, curves = _start(experiment, variant)
        layer = layer or default_layer(trainer.backbone)
        probe = TaskGradientProbe(trainer.engine.inner, layer, trainer.masker)
        try:
            probe.attach(trainer.backbone)
            head = classifier_weight(trainer.backbone)
        except ConfigError as exc:
            problems = [f"{line} (variant {variant.label})" for line in exc.problems]
            raise ConfigError(problems) from None
        trainer.engine.inner = probe  # the engine adapts through the probe
        _meta_train(experiment, variant, trainer, probe, head, curves)
        results = trainer.test()
        _write_json(saved, attrs.asdict(curves))
        (run.path / PARTIAL).unlink(missing_ok=True)
    return curves, results


def _meta_train(
    experiment: Experiment,
    variant: Variant,
    trainer: Trainer,
    probe: TaskGradientProbe,
    head: str,
    curves: Curves,
) -> None:
    """Train to the end, appending to ``curves``; every ``train.checkpoint_every`` iterations
    (and at the end) the curves so far go to ``task_gradient.partial.json``, then the
    checkpoint is written, so an interrupted variant resumes from them."""
    cfg, writer, partial = trainer.train_config, experiment.writer, variant.run.path / PARTIAL
    probe.recording = True
    with Progress(cfg.iterations, variant.label, trainer.iteration, experiment.progress) as bar:
        while trainer.iteration < cfg.iterations:
            # the meta-initial head, the one this iteration's tasks adapt from
            dispersion = head_dispersion(effective_weight(trainer.backbone, trainer.masker, head))
            trainer.train_step()
            it = trainer.iteration
            curves.task_gradient.append(probe.pop_mean())
            curves.head_dispersion.append(dispersion)
            writer.add_scalar(f"task_gradient/{variant.label}", curves.task_gradient[-1], it)
            writer.add_scalar(f"head_dispersion/{variant.label}", dispersion, it)
            if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                _write_json(partial, {"iteration": it, **attrs.asdict(curves)})
                trainer.save()
            bar.update(it)
    probe.recording = False


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

    rows, gradients, dispersions, summary = [], {}, {}, []
    for (method, lr), variant in zip(grid, variants):
        curves, results = _probe_run(experiment, variant, settings.layer)
        gradients[method, lr], dispersions[method, lr] = (
            curves.task_gradient,
            curves.head_dispersion,
        )
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
                percent(result_row(results)["accuracy"], results["ci95"]),
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
