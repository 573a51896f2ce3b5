"""How many directions a masked network's hidden units span, and how alike their masks are.

- **Participation ratio** (PR) of a layer's activations ``[N, D]``: ``(sum l)^2 / sum l^2`` over
  the eigenvalues ``l`` of their covariance. 1 when every sample varies along one direction
  (the hidden units are copies of each other up to scale), ``k`` for ``k`` equal directions.
- **Mean pairwise Hamming distance** of a layer's mask: the fraction of fan-in positions where
  two units' binary masks differ, averaged over unit pairs. 0: every unit keeps the same inputs.

:class:`MaskDiagnostics` measures both over training (a :meth:`fewmask.training.trainer.Trainer.fit`
callback) on the network the outer loop learns, before any task adaptation: the current masks
over the current weights, on a few fixed probe episodes, each episode's support and query images
in one batch, so that BatchNorm normalises with batch statistics as it does in training. It
writes ``RUN/diagnostics.csv`` (:data:`COLUMNS`) and TensorBoard scalars
``diagnostics/participation_ratio/<layer>`` and ``diagnostics/hamming/<layer>``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fewmask.engine.exact import masked_forward
from fewmask.interfaces import Backbone, Params
from fewmask.runtime import distributed
from fewmask.training.trainer import Trainer

FILE = "diagnostics.csv"
COLUMNS = ("iteration", "layer", "participation_ratio", "hamming", "sparsity")
PROBE_EPISODES = 4
PROBE_SEED = 0
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def participation_ratio(acts: Tensor) -> float:
    """``(sum l)^2 / sum l^2`` for the covariance eigenvalues ``l`` of ``acts`` ``[N, D]``.

    From the singular values of the centred matrix in float64 (``l`` is proportional to their
    squares); 0.0 when the activations do not vary at all.
    """
    x = acts.detach().flatten(1).to(torch.float64)
    centred = x - x.mean(0, keepdim=True)
    power = torch.linalg.svdvals(centred).square()
    total = power.sum()
    if total <= 1e-24 * x.square().sum():  # no variance, up to the rounding of the mean
        return 0.0
    return float(total.square() / power.square().sum())


def mean_pairwise_hamming(mask: Tensor) -> float:
    """Mean over unit pairs ``i < j`` of the fraction of positions where their masks differ.

    ``mask`` is ``[units, fan_in...]`` (nonzero = kept). A position kept by ``c`` of ``U`` units
    differs in ``c (U - c)`` pairs, so the sum over pairs needs only the column counts: exact
    (integer counts in float64) and without a ``U x U`` matrix. 0.0 with one unit.
    """
    kept = (mask.detach().flatten(1) != 0).to(torch.float64)
    units, positions = kept.shape
    if units < 2 or positions == 0:
        return 0.0
    counts = kept.sum(0)
    differing = (counts * (units - counts)).sum()
    return float(differing / (units * (units - 1) / 2) / positions)


def activation_blocks(backbone: Backbone) -> dict[str, nn.Module]:
    """``{masked body weight: the block whose output is that layer's activations}``.

    The block is the nearest module above the weight's own layer that is not a container (for
    the built-in MLPs the ``LinearBlock`` ``features.i``: Linear -> BatchNorm -> ReLU), or the
    layer itself when there is none. The classifier has no hidden activations and is left out.
    """
    modules = dict(backbone.named_modules())
    classifier = backbone.get_classifier()
    blocks = {}
    for name in backbone.maskable_parameter_names():
        layer = name.rpartition(".")[0]
        if modules[layer] is classifier:
            continue
        block = layer
        parent = layer.rpartition(".")[0]
        while parent:  # "" is the backbone itself
            if not isinstance(modules[parent], _CONTAINERS):
                block = parent
                break
            parent = parent.rpartition(".")[0]
        blocks[name] = modules[block]
    return blocks


def hidden_activations(
    backbone: Backbone, params: Params, masks: Params, x: Tensor
) -> dict[str, Tensor]:
    """The masked forward's output of each masked body weight's block (:func:`activation_blocks`)
    on ``x``, ``{weight name: [N, D]}`` (convolution outputs flattened per sample); no grad."""
    outputs: dict[int, Tensor] = {}

    def keep(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        outputs[id(module)] = output.detach().flatten(1)

    blocks = activation_blocks(backbone)
    handles = [block.register_forward_hook(keep) for block in set(blocks.values())]
    try:
        with torch.no_grad():
            masked_forward(backbone, params, masks, x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: outputs[id(block)] for name, block in blocks.items()}


def probe_batches(
    trainer: Trainer, episodes: int = PROBE_EPISODES, seed: int = PROBE_SEED
) -> list[Tensor]:
    """``episodes`` fixed episodes of the 'val' split (else 'train'), each as one image batch:
    support then query, on the trainer's device and dtype."""
    split = "val" if "val" in trainer.datasets else "train"
    generator = torch.Generator().manual_seed(seed)
    drawn = trainer.sampler.sample_many(trainer.datasets[split], generator, episodes)
    batches = []
    for episode in drawn:
        episode = episode.to(trainer.device, trainer.dtype)
        batches.append(torch.cat([episode.support_x, episode.query_x]))
    return batches


def layer_rows(trainer: Trainer, probe: Sequence[Tensor]) -> list[dict[str, Any]]:
    """One row per masked layer (:data:`COLUMNS`) for the trainer's current state; the
    participation ratio is the mean over ``probe`` ("" for a layer without activations)."""
    masks = trainer.engine.frozen_masks()
    params = dict(trainer.backbone.named_parameters())
    ratios: dict[str, list[float]] = {}
    device = trainer.device
    with torch.random.fork_rng([device] if device.type == "cuda" else [], device_type=device.type):
        for x in probe:  # the global RNG is left as it was: training does not change
            for name, acts in hidden_activations(trainer.backbone, params, masks, x).items():
                ratios.setdefault(name, []).append(participation_ratio(acts))
    return [
        {
            "iteration": trainer.iteration,
            "layer": name,
            "participation_ratio": sum(ratios[name]) / len(ratios[name]) if name in ratios else "",
            "hamming": mean_pairwise_hamming(mask),
            "sparsity": 1.0 - (mask != 0).double().mean().item(),
        }
        for name, mask in masks.items()
    ]


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a diagnostics file (none if it is missing); a line cut short is dropped."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if _iteration(row) is not None]


def _iteration(row: dict[str, Any]) -> int | None:
    try:
        return int(row["iteration"]) if row.get("sparsity") not in (None, "") else None
    except (KeyError, TypeError, ValueError):
        return None


class MaskDiagnostics:
    """A ``Trainer.fit`` callback: the diagnostics of :func:`layer_rows` every ``every``
    iterations and at the last, appended to ``run_dir/diagnostics.csv`` and logged as scalars.

    Call :meth:`start` before ``fit`` (and before ``test`` for a run that is not trained): it
    writes the rows of iteration 0, or, on a run resumed at iteration ``k``, drops the rows an
    earlier process wrote after ``k``.

    Example::

        diagnostics = MaskDiagnostics(probe_batches(trainer), every=50, run_dir=trainer.run_dir)
        diagnostics.start(trainer)
        trainer.fit(callbacks=[diagnostics])
    """

    def __init__(self, probe: Sequence[Tensor], every: int, run_dir: str | Path):
        self.probe, self.every = list(probe), every
        self.path = Path(run_dir) / FILE
        self._started = False
        self._pending: list[dict[str, Any]] = []  # iteration 0: logged once the logger is open

    def start(self, trainer: Trainer) -> None:
        """Begin at the trainer's iteration: rows after it are dropped; at 0 the file starts
        afresh with the rows of the untrained state."""
        self._begin(trainer, trainer.iteration, initial=True)

    def __call__(self, trainer: Trainer) -> None:
        if not self._started:  # used without start(): it began at the iteration before this
            self._begin(trainer, trainer.iteration - 1, initial=False)
        if not distributed.is_main():
            return
        for row in self._pending:
            self._log(trainer, row)
        self._pending = []
        it = trainer.iteration
        if self.every and (it % self.every == 0 or it == trainer.train_config.iterations):
            for row in self._write(trainer):
                self._log(trainer, row)

    def _begin(self, trainer: Trainer, begin: int, initial: bool) -> None:
        self._started = True
        if not distributed.is_main():
            return
        kept = [r for r in read_rows(self.path) if begin and _iteration(r) <= begin]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        if initial and begin == 0:
            self._pending = self._write(trainer)

    def _write(self, trainer: Trainer) -> list[dict[str, Any]]:
        rows = layer_rows(trainer, self.probe)
        with open(self.path, "a", newline="") as handle:  # flushed on close: a killed run
            csv.DictWriter(handle, fieldnames=COLUMNS).writerows(rows)  # keeps its rows
        return rows

    @staticmethod
    def _log(trainer: Trainer, row: dict[str, Any]) -> None:
        it, layer = row["iteration"], row["layer"]
        if row["participation_ratio"] != "":
            trainer.logger.scalar(
                f"diagnostics/participation_ratio/{layer}", row["participation_ratio"], it
            )
        trainer.logger.scalar(f"diagnostics/hamming/{layer}", row["hamming"], it)
