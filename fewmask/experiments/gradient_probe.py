"""The task-gradient probe itself (Figure 2): an inner optimizer that records one layer's inner
gradient per task, and the recorder that keeps its curves in a run folder across resumes.
:mod:`fewmask.experiments.task_gradient` runs it as an experiment; a launcher's worker rebuilds
it by name (:mod:`fewmask.experiments.jobs`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.errors import ConfigError, FewmaskError, closest_name
from fewmask.interfaces import Backbone, InnerOptimizer, Masker, Params
from fewmask.runtime.folder import RunFolder
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
        recording = self.recording and training  # not the validation or test episodes
        if recording and not self.lr:
            step0 = self.step0_gradient(params, support_loss)
        fast = self.base.adapt(params, support_loss, training=training)
        if recording:
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


def read_curves(path: Path) -> Curves:
    """A finished variant's curves; the old format is a plain list of gradient values."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return Curves(data, [])
    return Curves(data["task_gradient"], data.get("head_dispersion", []))


def resumed_curves(path: Path, iteration: int) -> Curves | None:
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


class TaskGradientRecorder:
    """The probe of one variant as the ``task-gradient`` job probe (rebuilt by name in the
    worker, :data:`fewmask.experiments.jobs.PROBES`).

    ``before()`` (the worker, before the run starts) keeps a checkpoint only if the partial
    file has the values up to it; ``start(trainer)`` puts the probe into the engine and picks
    up the curves so far; after every iteration (a fit callback) the values are appended, and
    at every checkpoint the curves so far go to ``task_gradient.partial.json``, written before
    the checkpoint; ``after()`` turns the finished curves into ``task_gradient.json``."""

    def __init__(self, run_dir: str, layer: str | None = None, label: str = ""):
        self.run = RunFolder(run_dir)
        self.partial, self.saved = self.run.path / PARTIAL, self.run.path / SAVED
        self.layer, self.label = layer, label
        self.probe: TaskGradientProbe | None = None
        self.curves = Curves()
        self.head, self.dispersion = "", 0.0

    def before(self) -> None:
        if self.run.has_results() or not self.run.path.is_dir():
            return
        with self.run.locked():
            for tmp in self.run.path.glob(".task_gradient*.tmp"):  # a crash during a write
                tmp.unlink()
            if (
                self.run.has_checkpoint()
                and resumed_curves(self.partial, _iteration(self.run)) is None
            ):
                self.run.discard_run()  # a checkpoint without the values before it: start over
                self.run.previous_checkpoint.unlink(missing_ok=True)
            if not self.run.holds_run():
                self.partial.unlink(missing_ok=True)

    def start(self, trainer: Trainer) -> None:
        curves = resumed_curves(self.partial, trainer.iteration)
        if curves is None:
            raise ConfigError(
                [
                    f"{self.partial}: it does not hold the values up to iteration "
                    f"{trainer.iteration}; remove {self.run.path} to run the variant again"
                ]
            )
        self.curves = curves
        layer = self.layer or default_layer(trainer.backbone)
        self.probe = TaskGradientProbe(trainer.engine.inner, layer, trainer.masker)
        try:
            self.probe.attach(trainer.backbone)
            self.head = classifier_weight(trainer.backbone)
        except ConfigError as exc:
            problems = [f"{line} (variant {self.label})" for line in exc.problems]
            raise ConfigError(problems) from None
        trainer.engine.inner = self.probe  # the engine adapts through the probe
        self.probe.recording = True
        self.dispersion = self._dispersion(trainer)  # the first iteration's meta-initial head

    def __call__(self, trainer: Trainer) -> None:
        assert self.probe is not None
        cfg, it = trainer.train_config, trainer.iteration
        self.curves.task_gradient.append(self.probe.pop_mean())
        self.curves.head_dispersion.append(self.dispersion)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:  # before the checkpoint
            _write_json(self.partial, {"iteration": it, **attrs.asdict(self.curves)})
        self.dispersion = self._dispersion(trainer)  # the next iteration's meta-initial head

    def after(self) -> None:
        if self.run.has_results() and self.partial.is_file():
            finish_curves(self.partial, self.saved)

    def _dispersion(self, trainer: Trainer) -> float:
        return head_dispersion(effective_weight(trainer.backbone, trainer.masker, self.head))


def _iteration(run: RunFolder) -> int:
    """The iteration of the run's checkpoint (-1, matching no values, if it is unreadable)."""
    try:
        return int(run.load_checkpoint()["iteration"])
    except (FewmaskError, KeyError, TypeError, ValueError):
        return -1


def finish_curves(partial: Path, saved: Path) -> Curves:
    """The finished curves from the partial file into ``task_gradient.json``."""
    data = json.loads(partial.read_text())
    curves = Curves(list(data["task_gradient"]), list(data["head_dispersion"]))
    _write_json(saved, attrs.asdict(curves))
    partial.unlink()
    return curves
