"""IteRand (Chijiwa et al., NeurIPS 2021) as a masker wrapper: re-randomise pruned weights.

Every ``period`` outer iterations (after the updates of iterations ``period - 1``,
``2 period - 1``, ...), each weight the current mask prunes is replaced, with probability ``rate``,
by a fresh kaiming-normal sample ``N(0, 2 / fan_in)`` (the sign is not kept). Kept weights never
change, so the network's function is unchanged at that moment; the new values matter only when
a pruned weight revives. This is the rule the Meta-ticket code applies (its ``rerand_rate`` is
this ``rate``; IteRand's own code calls it ``rerand_lambda``).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from fewmask import Backbone, ComponentRef, ConfigError, Masker, component, option

NO_SCORES = (
    "iterand re-draws the weights its base masker prunes, but {name!r} has no scores and prunes "
    "nothing; wrap a masker with scores, e.g. metaticket"
)


@attrs.frozen
class IteRandConfig:
    """Options of the ``iterand`` masker."""

    base: ComponentRef = component(
        "masker",
        "metaticket",
        help="the masker to wrap, {name: ..., options: {...}}; one with scores (not dense)",
    )
    period: int = option(1000, ge=1, help="re-randomise every this many outer iterations")
    rate: float = option(1.0, ge=0, le=1, help="probability that a pruned weight is re-drawn")

    def check(self) -> dict[str, str]:
        if self.base.name == "dense":  # a masker of another kind is checked when it is attached
            return {"base": NO_SCORES.format(name="dense")}
        return {}


class IteRandMasker(Masker):
    """Wraps another masker (``base``) and re-draws its pruned weights every ``period`` steps."""

    config_class = IteRandConfig
    description = "IteRand: re-draw pruned weights every `period` iterations (wraps a masker)"

    def __init__(self, config: IteRandConfig, *, base: Masker):
        """``base`` is the wrapped masker, built by the factory from ``config.base``
        (``fewmask.create("masker", "iterand", {...})`` does that)."""
        super().__init__()
        self.config = config
        self.base = base
        self.events = 0
        self.redrawn: torch.Tensor | float = 0.0  # weights re-drawn by the last re-draw

    def attach(self, backbone: Backbone) -> None:
        self.base.attach(backbone)
        if not self.base.meta_parameters():
            name = self.config.base.name
            raise ConfigError([f"$.masker.options.base: {NO_SCORES.format(name=name)}"])

    def masks(self) -> dict[str, torch.Tensor]:
        return self.base.masks()

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return self.base.meta_parameters()

    def on_outer_step(self, iteration: int, backbone: Backbone) -> None:
        self.base.on_outer_step(iteration, backbone)
        if (iteration + 1) % self.config.period == 0:
            self.redrawn = rerandomize_pruned(backbone, self.base.masks(), self.config.rate)
            self.events = (iteration + 1) // self.config.period  # a resumed run counts alike

    def log_scalars(self) -> dict[str, torch.Tensor | float]:
        """``redraws`` (so far) and ``redrawn_weights`` (by the last one), as TensorBoard and
        ``metrics.jsonl`` scalars ``masker/redraws`` and ``masker/redrawn_weights``."""
        return {**self.base.log_scalars(), "redraws": self.events, "redrawn_weights": self.redrawn}


def rerandomize_pruned(
    backbone: Backbone, masks: dict[str, torch.Tensor], rate: float
) -> torch.Tensor:
    """Replace each pruned entry (mask 0) with a fresh ``N(0, 2/fan_in)`` draw w.p. ``rate``;
    returns how many were replaced (a 0-dim tensor on the weights' device, not read here)."""
    counts = []
    with torch.no_grad():
        for name, mask in masks.items():
            weight = backbone.get_parameter(name)
            std = math.sqrt(2.0 / weight[0].numel())
            fresh = torch.randn_like(weight) * std
            chosen = (mask.detach() == 0) & (torch.rand_like(weight) < rate)
            weight.copy_(torch.where(chosen, fresh, weight))
            counts.append(chosen.sum())
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)
