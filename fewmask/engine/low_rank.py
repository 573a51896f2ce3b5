"""Linear layers of the batched path whose per-task weights are never formed.

One inner SGD step changes a linear layer's (masked) weight by ``m2 * (D^T A)``: ``A`` holds
the layer's inputs on the support set and ``D = -lr * dL/dz`` the loss's gradients w.r.t. its
outputs ``z`` (one row per support example). So after ``S`` steps a task's weight is the shared
``E`` plus ``S`` such updates, of rank at most the support size, and a later forward on inputs
``x`` can use them without forming the ``(out, in)`` matrix per task:

- unmasked (MAML): ``x (D^T A)^T = (x A^T) D``, costing ``N x N_s x (in + out)``;
- masked: ``x (m2 * D^T A)^T`` has entries ``sum_s D[s, o] * ((x * A[s]) m2^T)[o]``, one matrix
  product of ``N * N_s`` rows with the shared ``m2``, ``N x N_s x in x out``.

The shared ``E x`` is one matrix product over all tasks' rows, and the gradients w.r.t. ``E``
and ``m2`` come out summed over tasks: nothing weight-sized is done per task. The masked form
only pays while ``N x N_s`` stays small (1-shot); :func:`low_rank_layers` picks, per layer, the
form with fewer operations (:data:`DENSE_COST`). Every derivative is the dense update's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fewmask.interfaces import Params

DENSE_COST = 600
"""A dense per-task update costs about this many passes over a weight-sized tensor per task
(forming ``D^T A``, the masked update, and their backward), in units of one multiply-add of a
matrix product. A layer takes the low-rank form when its matrix-product work, counted in
multiply-adds per weight entry, stays below this (measured with ``benchmarks/batched_step.py``,
docs/performance.md)."""


def low_rank_layers(
    backbone: nn.Module,
    masked: Sequence[str],
    support: int,
    query: int,
    steps: int,
) -> list[str]:
    """The ``nn.Linear`` weights of ``backbone`` that are cheaper kept as low-rank updates, for
    ``steps`` inner steps on ``support`` examples and a forward on ``query`` examples.

    Counted per task in multiply-adds: step ``t``'s forward sees ``t - 1`` updates on the
    support, the query forward ``steps`` updates, each a ``support``-row factor pair.
    """
    pairs = support * support * steps * (steps - 1) // 2 + query * support * steps
    chosen = []
    for weight, module in linear_weights(backbone).items():
        size = module.in_features * module.out_features
        work = 3 * pairs * (size if weight in masked else module.in_features + module.out_features)
        if work <= DENSE_COST * size:
            chosen.append(weight)
    return chosen


def linear_weights(backbone: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``backbone`` by the parameter name of its weight."""
    return {
        (f"{name}.weight" if name else "weight"): module
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear)
    }


class LowRankLinears:
    """The low-rank linear layers of one batched meta-step (:mod:`fewmask.engine.low_rank`).

    Each chosen weight enters the forward as its shared 2-D value (``fast[name]``), recognised
    by identity in :meth:`linear`; :meth:`record_step` turns the gradients w.r.t. the recorded
    outputs into one more update per task.
    """

    def __init__(
        self,
        fast: Params,
        names: Sequence[str],
        adapted: Sequence[str],
        m2: Mapping[str, Tensor],
        tasks: int,
    ):
        self.names = {id(fast[n]): n for n in names}
        self.m2 = {n: m2.get(n) for n in names}
        self.tasks = tasks
        self.updates: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in names}
        self.seen: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in names if n in adapted}

    def linear(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor | None:
        """``F.linear`` on packed ``(N, T*in)`` inputs if ``weight`` is one of ours, else None."""
        name = self.names.get(id(weight))
        if name is None:
            return None
        out_features, in_features = weight.shape
        n = input.shape[0]
        x = input.reshape(n, self.tasks, in_features)
        y = torch.matmul(x, weight.t())  # (N, T, out): the shared product, all tasks' rows
        if bias is not None:
            y = y + bias  # (T, out) per-task biases
        mask = self.m2[name]
        for d, a in self.updates[name]:  # d: (Ns, T, out), a: (Ns, T, in)
            if mask is None:
                overlap = torch.bmm(x.transpose(0, 1), a.permute(1, 2, 0))  # (T, N, Ns)
                y = y + torch.bmm(overlap, d.transpose(0, 1)).transpose(0, 1)
            else:
                rows = x.unsqueeze(1) * a.unsqueeze(0)  # (N, Ns, T, in)
                y = y + (torch.matmul(rows, mask.t()) * d.unsqueeze(0)).sum(1)
        z = y.reshape(n, self.tasks * out_features)
        if name in self.seen:  # adapted: its output's gradient makes the next update
            self.seen[name].append((x, z))
        return z

    def outputs(self) -> list[Tensor]:
        """The outputs recorded since the last step, in a fixed order."""
        return [z for n in self.seen for _, z in self.seen[n]]

    def record_step(self, grads: Sequence[Tensor | None], create_graph: bool) -> None:
        """Add one update per weight from ``grads``, the step's gradients (already scaled by
        ``-lr``) w.r.t. :meth:`outputs`; a weight used twice sums its uses. Without
        ``create_graph`` (first order) the update is a constant, its inputs detached too."""
        grads = iter(grads)
        for name, uses in self.seen.items():
            ds, inputs = [], []
            for x, z in uses:
                g = next(grads)
                if g is not None:
                    ds.append(g.reshape(z.shape[0], self.tasks, -1))
                    inputs.append(x if create_graph else x.detach())
            if ds:
                self.updates[name].append((torch.cat(ds), torch.cat(inputs)))
        self.forget()

    def forget(self) -> None:
        """Drop the recorded outputs (after a step, and after the query forward)."""
        self.seen = {n: [] for n in self.seen}
