"""The five abstractions of fewmask (plus the dataset source that feeds them).

A meta-learner is composed of:

- :class:`Backbone`: the network; says which weights may be masked and splits body from head.
- :class:`Masker`: turns meta-learned scores into binary masks over the maskable weights
  (the ``dense`` masker is the identity, for MAML).
- :class:`InnerOptimizer`: the differentiable support-set steps, with a per-parameter learning rate.
- :class:`MetaObjective`: what the outer loop learns (initial weights for MAML, scores for
  Meta-ticket), its losses and metrics, and its optimizer and learning-rate schedule.
- :class:`EpisodeSampler`: draws N-way K-shot Q-query episodes from a :class:`FewShotDataset`.

A :class:`Launcher` runs an experiment's runs (in this process, a process pool, a cluster).

Each component class is constructed from its config object (an attrs class registered with it):
``cls(config)``; backbones also get ``input_shape`` and ``num_classes``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
"""Tensors of a backbone by parameter name, as ``torch.func.functional_call`` takes them."""


class Episode(NamedTuple):
    """One few-shot task: support and query images with labels ``0..ways-1``.

    Samplers may return uint8 images (0..255, a quarter of the bytes to move); :meth:`to`
    turns them into floats in [0, 1] on the target device.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Episode:
        """Images as ``dtype`` in [0, 1] on ``device`` (uint8 ones divided by 255 there).

        Copies to a GPU are queued without waiting for them (no host synchronisation)."""
        return Episode(
            _as_float(self.support_x, device, dtype),
            self.support_y.to(device, non_blocking=True),
            _as_float(self.query_x, device, dtype),
            self.query_y.to(device, non_blocking=True),
        )


def _as_float(images: Tensor, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    if images.dtype == torch.uint8:
        return images.to(device, non_blocking=True).to(dtype).div_(255.0)
    return images.to(device=device, dtype=dtype)


@attrs.frozen(eq=False)
class FewShotDataset:
    """Images of one split, held in memory, grouped by class.

    Args:
        images: uint8 tensor ``[N, C, H, W]``, sorted by class (on the CPU, or on a device
            after :meth:`to`).
        labels: int64 tensor ``[N]`` of class indices ``0..num_classes-1``, non-decreasing.
        class_names: one name per class.
        name: what the data is (used in messages).
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    name: str = "dataset"

    def __attrs_post_init__(self) -> None:
        from fewmask.errors import DatasetError

        problems = []
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            problems.append(
                f"images must be a uint8 tensor [N, C, H, W], got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            problems.append(
                f"labels must be 1-D with one entry per image ({len(self.images)}), "
                f"got shape {tuple(self.labels.shape)}"
            )
        elif len(self.labels) == 0:
            problems.append("the split holds no images")
        elif bool((self.labels[1:] < self.labels[:-1]).any()) or int(self.labels.min()) < 0:
            problems.append("labels must be non-negative and sorted by class")
        elif int(self.labels.max()) >= len(self.class_names):
            problems.append(
                f"labels go up to {int(self.labels.max())} but there are only "
                f"{len(self.class_names)} class names"
            )
        if problems:
            raise DatasetError(f"{self.name}: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def class_counts(self) -> Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def to(self, device: torch.device | str) -> FewShotDataset:
        """The same split with its uint8 images on ``device`` (moved once, here).

        Samplers gather episodes where the images are, so on a GPU the episodes are cut out
        there; the labels stay on the CPU, where samplers draw their random indices.
        """
        return attrs.evolve(self, images=self.images.to(device))


class Backbone(nn.Module, ABC):
    """A classifier network split into a body (feature extractor) and a head.

    Follows the subset of timm's model protocol that meta-learning needs: ``forward_features``,
    ``forward_head(x, pre_logits=False)``, ``get_classifier()``, ``reset_classifier(n)``; plus
    which weights a masker may prune. Subclasses are built as
    ``cls(config, input_shape=(C, H, W), num_classes=N)``; ``num_features`` is the width of the
    classifier's input. Checks that need only the options belong in the config class's
    ``check()`` (run by ``fewmask validate`` before any data is read), not in ``__init__``.
    """

    num_features: int
    input_shape: tuple[int, ...] | None = None
    """The image shape ``(C, H, W)`` it was built for, if it records one (all built-in backbones
    do): the Trainer refuses data of another shape with a clear message."""
    task_separable: bool = False
    """Set to True in a class (and each of its module classes) whose ``forward`` uses only
    operations that keep a meta-batch's tasks apart when they are packed side by side in the
    channel dimension (linear, conv, batch-statistics BatchNorm, element-wise ops, pooling,
    flatten): the batched engine then runs all tasks in one forward. A subclass does not
    inherit it (it may override ``forward``): it must declare it again."""

    @abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """Map images to features (the body); ``forward_head`` takes its output."""

    @abstractmethod
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Map features to logits, or with ``pre_logits`` to the classifier's input
        ``[batch, num_features]`` (after any pooling)."""

    @abstractmethod
    def get_classifier(self) -> nn.Module:
        """The head module; its parameters form the ``head`` group, all others the ``body``."""

    @abstractmethod
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised classifier of ``num_classes`` outputs."""

    @abstractmethod
    def maskable_parameter_names(self) -> list[str]:
        """Names of the weights a masker may prune (conv/linear weights; never norms or biases)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def parameter_groups(self) -> dict[str, str]:
        """``{parameter name: "body" or "head"}`` for every parameter, in registration order."""
        head = {id(p) for p in self.get_classifier().parameters()}
        return {n: ("head" if id(p) in head else "body") for n, p in self.named_parameters()}


class Masker(nn.Module, ABC):
    """Turns (meta-learned) scores into binary masks over a backbone's maskable weights.

    A masker holds its own state (scores, thresholds) as module parameters and buffers, so its
    ``state_dict`` is what a checkpoint needs. The effective weight is ``mask * weight``.
    """

    @abstractmethod
    def attach(self, backbone: Backbone) -> None:
        """Create state for ``backbone`` (it may re-initialise the maskable weights)."""

    @abstractmethod
    def masks(self) -> Params:
        """Current masks by parameter name, differentiable w.r.t. the scores; ``{}`` means dense."""

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """Scores the outer loop may learn, by masked parameter name (none for a dense masker)."""
        return {}

    def on_outer_step(self, iteration: int, backbone: Backbone) -> None:
        """Called once after every outer update (e.g. to re-randomise pruned weights)."""

    def log_scalars(self) -> Mapping[str, float | Tensor]:
        """Scalars worth recording, by name: the Trainer logs each as ``masker/NAME`` with the
        training scalars (``train.log_every``). 0-dim tensors are read only then, so keeping
        them costs no host synchronisation. Default: none."""
        return {}


class SGDSteps(NamedTuple):
    """What an inner optimizer's adaptation is when it is plain SGD (see
    :meth:`InnerOptimizer.plain_sgd`): ``steps`` updates ``p <- p - rates[p] * dL/dp``."""

    rates: Mapping[str, float]
    steps: int
    create_graph: bool


class InnerOptimizer(ABC):
    """The differentiable support-set adaptation of one task (learn2learn's ``adapt(loss)``).

    It owns its learning rates, its numbers of steps and whether its steps are differentiated:
    :meth:`attach` fixes the per-parameter rates for a backbone once; :meth:`adapt` chooses the
    steps for training or evaluation itself. Capabilities that engine paths may use are methods
    whose default declines (:meth:`plain_sgd`).
    """

    @abstractmethod
    def attach(self, backbone: Backbone) -> None:
        """Prepare for ``backbone`` (e.g. compute each parameter's learning rate; 0 freezes
        a parameter in the inner loop). Called before any :meth:`adapt` (the engine calls it
        when it is built); calling it again prepares afresh."""

    @abstractmethod
    def adapt(
        self, params: Params, support_loss: Callable[[Params], Tensor], *, training: bool
    ) -> Params:
        """The parameters after adapting to ``support_loss``.

        With ``training`` (meta-training) the steps must be differentiable unless the optimizer
        is first-order; otherwise (validation, meta-test) no meta-gradient is taken.
        """

    def plain_sgd(self, *, training: bool) -> SGDSteps | None:
        """What :meth:`adapt` does, if it is exactly plain SGD steps; else None (the default).

        Engine paths that reimplement the steps (the fused SGD path) run only for inner
        optimizers that answer here; a wrapper that must see every :meth:`adapt` call keeps the
        default.
        """
        return None


class MetaObjective(ABC):
    """What the outer loop learns and minimises, with which optimizer and learning-rate schedule.

    The losses and metrics default to cross-entropy and accuracy; override them for another
    query loss. ``default_masker`` names the masker a config gets when it does not choose one.
    """

    default_masker: str = "dense"
    needs_scores: bool = False
    """Whether the objective meta-learns the masker's scores (``fewmask validate`` then refuses
    a masker without any, e.g. ``dense``)."""

    @abstractmethod
    def meta_parameters(self, backbone: Backbone, masker: Masker) -> dict[str, nn.Parameter]:
        """The tensors the outer optimizer updates, by name."""

    @abstractmethod
    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The outer optimizer over ``params``."""

    @abstractmethod
    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, total_iterations: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The outer learning-rate schedule; stepped once after every outer update."""

    def support_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The inner loop's loss on a support set (default: cross-entropy)."""
        return F.cross_entropy(logits, labels)

    def query_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The meta-loss of one task on its query set, after adaptation (default:
        cross-entropy)."""
        return F.cross_entropy(logits, labels)

    def metrics(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Scalar metrics of one task's query predictions, by name (computed without a graph).

        The default is ``accuracy``, the headline number of validation and meta-test; add
        yours to it (``{**super().metrics(logits, labels), ...}``).
        """
        return {"accuracy": (logits.argmax(1) == labels).float().mean()}


class EpisodeSampler(ABC):
    """Draws N-way K-shot Q-query episodes; ``ways``, ``shots`` and ``queries`` are attributes."""

    ways: int
    shots: int
    queries: int

    @abstractmethod
    def check(self, dataset: FewShotDataset) -> None:
        """Raise :class:`fewmask.errors.DatasetError` if ``dataset`` cannot serve these episodes."""

    @abstractmethod
    def sample(self, dataset: FewShotDataset, generator: torch.Generator) -> Episode:
        """One episode (uint8 images, or floats in [0, 1]), drawn with ``generator`` only."""

    def sample_many(
        self, dataset: FewShotDataset, generator: torch.Generator, count: int
    ) -> list[Episode]:
        """``count`` episodes; override to draw them in one vectorised pass."""
        return [self.sample(dataset, generator) for _ in range(count)]


class DatasetSource(ABC):
    """Loads the splits of one dataset into memory."""

    splits: tuple[str, ...] = ("train", "val", "test")

    @abstractmethod
    def load(self, split: str) -> FewShotDataset:
        """The named split; an unknown split raises a ``DatasetError`` listing the valid ones."""


class Launcher(ABC):
    """Runs an experiment's jobs: in this process, a process pool, a cluster's queue.

    A job is plain data (its label, resolved config, run folder and the name of its probe) and
    pickles; ``work`` is a module-level function that runs one job and returns its outcome
    without raising for the job's own failure, so a launcher only moves jobs and outcomes.
    Every job is started with ``start="auto"``: running a job again reuses a finished run and
    resumes a started one from its checkpoint, so a launcher may resubmit freely.
    """

    isolates_failures: bool = True
    """Whether a failing job leaves the others running (``serial`` stops at the first)."""

    @abstractmethod
    def launch(
        self,
        jobs: Sequence[Any],
        work: Callable[[Any], Any],
        tell: Callable[..., None],
        folder: Path,
    ) -> list[Any]:
        """Run ``work(job)`` for every job; return, in the order of ``jobs``, what each call
        returned, or an exception for a job that returned nothing (killed, lost, cancelled).

        ``tell(job, "running")`` when a job starts (as far as the launcher knows) and
        ``tell(job, "done", outcome)`` as soon as it ends, with what the list will hold for it;
        ``folder`` is where the launcher may keep its own files (cluster logs)."""


COMPONENT_KINDS: dict[str, type] = {
    "backbone": Backbone,
    "masker": Masker,
    "inner_optimizer": InnerOptimizer,
    "objective": MetaObjective,
    "sampler": EpisodeSampler,
    "dataset": DatasetSource,
    "launcher": Launcher,
}
"""Every kind of component the registry holds, with the base class its entries must subclass."""
