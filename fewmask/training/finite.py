"""Finite-value checks of a training state: what a checkpoint may hold, when meta-parameters
diverge.

Reading a tensor's values waits for the device, so the Trainer calls these where it reads
values anyway: at logging and checkpoint steps, never inside one meta-iteration.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from fewmask.errors import FewmaskWarning, NonFiniteError

DIVERGING = 1e12
"""A meta-parameter larger than this in magnitude is taken as a diverging run (a warning)."""


def first_non_finite(state: Any, path: str = "") -> str | None:
    """The path (``backbone.features.0.weight``) of the first floating-point tensor in ``state``
    (nested mappings and lists) that holds a NaN or an Inf; None if all are finite."""
    tensors = list(_float_tensors(state, path))
    if not tensors:
        return None
    if bool(torch.stack([torch.isfinite(t).all().cpu() for _, t in tensors]).all()):
        return None  # one wait for the device in the common case
    return next(name for name, t in tensors if not bool(torch.isfinite(t).all()))


def _float_tensors(value: Any, path: str):
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and value.numel():
            yield path, value.detach()
    elif isinstance(value, Mapping):
        for key, child in value.items():
            yield from _float_tensors(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, child in enumerate(value):
            yield from _float_tensors(child, f"{path}[{i}]")


def check_meta_parameters(
    params: Mapping[str, torch.Tensor], iteration: int, lr: float, warned: bool
) -> bool:
    """Raise NonFiniteError if a meta-parameter holds a NaN or Inf after the update of
    ``iteration``; warn (once: returns True when it did or had) if one exceeds
    :data:`DIVERGING` in magnitude, the mark of an outer learning rate ``lr`` far too high."""
    named = [(name, p.detach()) for name, p in params.items() if p.numel()]
    if not named:
        return warned
    peaks = torch.stack([p.abs().amax().float().cpu() for _, p in named])
    peak = float(peaks.max())
    if math.isfinite(peak) and (warned or peak <= DIVERGING):
        return warned
    name, value = max(zip((n for n, _ in named), peaks.tolist()), key=lambda item: _order(item[1]))
    if not math.isfinite(peak):
        raise NonFiniteError(
            f"meta-parameter {name!r} is not finite after the outer update of iteration "
            f"{iteration} (outer learning rate {lr:g}); the state is not saved, the last "
            "checkpoint is kept; lower the objective's lr"
        )
    warnings.warn(
        f"meta-parameter {name!r} reached {value:.3g} at iteration {iteration}: the run is "
        f"diverging; the outer learning rate ({lr:g}) is probably far too high",
        FewmaskWarning,
        stacklevel=3,
    )
    return True


def _order(value: float) -> float:
    return math.inf if math.isnan(value) else value
