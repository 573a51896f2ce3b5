"""The ``structured`` masker: hand-made fixed masks, local in the first layer, sparse fan-in deeper.

A mask-only expressivity bound for the constant-weight experiment: no scores, nothing learned.

- The first maskable weight, when it sees the whole image (fan-in ``C * H * W`` of the
  backbone's ``input_shape``), keeps for each unit one ``patch x patch`` window of the image
  (every channel), at a position drawn uniformly among those where the window fits.
- Every other maskable weight of the body keeps ``fan_in`` of its inputs per unit (per output
  row), drawn without replacement; all of them if the layer has fewer.
- A masked classifier keeps ``head_fan_in`` inputs per class, or all of them with 0 (the
  default: the head is then not the bottleneck of what the masks can express).
- ``weight_init: constant`` sets every maskable weight to ``sqrt(2 / fan_in)`` (the full fan-in,
  as the Meta-ticket masker's constant), ``keep`` leaves the backbone's weights as they are.

Positions are drawn from the global random generator (seeded by the run's ``seed``), so a run
is reproducible.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from fewmask.errors import ConfigError
from fewmask.interfaces import Backbone, Masker, Params
from fewmask.options import option


@attrs.frozen
class StructuredConfig:
    """Options of the ``structured`` masker."""

    patch: int = option(5, ge=0, help="first layer: side of each unit's square window (0: off)")
    fan_in: int = option(1, ge=1, help="inputs kept per unit in every other masked body layer")
    head_fan_in: int = option(
        0, ge=0, help="inputs kept per class in a masked classifier (0: all of them)"
    )
    weight_init: str = option(
        "constant",
        choices=("constant", "keep"),
        help="constant: every masked weight sqrt(2/fan_in); keep: the backbone's weights",
    )


def patch_mask(units: int, shape: tuple[int, ...], patch: int, generator=None) -> Tensor:
    """``[units, C*H*W]`` masks, each one ``patch x patch`` window (all ``C`` channels) of a
    ``(C, H, W)`` image at a uniformly drawn position where it fits."""
    channels, height, width = shape
    if patch > min(height, width):
        raise ValueError(f"a {patch}x{patch} patch does not fit a {height}x{width} image")
    rows = torch.randint(0, height - patch + 1, (units,), generator=generator)
    cols = torch.randint(0, width - patch + 1, (units,), generator=generator)
    mask = torch.zeros(units, channels, height, width)
    for unit, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        mask[unit, :, r : r + patch, c : c + patch] = 1.0
    return mask.flatten(1)


def fan_in_mask(shape: tuple[int, ...], keep: int, generator=None) -> Tensor:
    """A mask of ``shape`` ``[units, ...]`` keeping ``keep`` random positions per unit (all of
    them when a unit has fewer)."""
    units, positions = shape[0], math.prod(shape[1:])
    keep = min(keep, positions)
    order = torch.rand(units, positions, generator=generator).argsort(dim=1)
    mask = torch.zeros(units, positions)
    mask.scatter_(1, order[:, :keep], 1.0)
    return mask.view(shape)


class StructuredMasker(Masker):
    """Fixed hand-made masks (:mod:`fewmask.builtins.structured`); no scores to learn."""

    config_class = StructuredConfig
    description = "fixed masks: local first-layer patches, k inputs per deeper unit"

    def __init__(self, config: StructuredConfig | None = None):
        super().__init__()
        self.config = config or StructuredConfig()
        self.names: list[str] = []

    def attach(self, backbone: Backbone) -> None:
        if self.names:
            raise RuntimeError("this StructuredMasker is already attached; make a new one")
        shape = tuple(getattr(backbone, "input_shape", None) or ())
        groups = backbone.parameter_groups()
        for i, name in enumerate(backbone.maskable_parameter_names()):
            weight = backbone.get_parameter(name)
            if i == 0 and self.config.patch:
                if len(shape) != 3 or weight[0].numel() != math.prod(shape):
                    raise ConfigError(
                        [
                            f"$.masker.options.patch: the first masked weight {name} "
                            f"{tuple(weight.shape)} does not see the whole image "
                            f"{shape or '(unknown shape)'}; set patch: 0"
                        ]
                    )
                if self.config.patch > min(shape[1:]):
                    raise ConfigError(
                        [
                            f"$.masker.options.patch: {self.config.patch} is larger than the "
                            f"{shape[1]}x{shape[2]} image"
                        ]
                    )
                mask = patch_mask(len(weight), shape, self.config.patch)
            elif groups.get(name) == "head":
                keep = self.config.head_fan_in or weight[0].numel()
                mask = fan_in_mask(tuple(weight.shape), keep)
            else:
                mask = fan_in_mask(tuple(weight.shape), self.config.fan_in)
            if self.config.weight_init == "constant":
                with torch.no_grad():
                    weight.fill_(math.sqrt(2.0 / weight[0].numel()))
            self.names.append(name)
            self.register_buffer(_key(name), mask.view_as(weight).to(weight.dtype))

    def masks(self) -> Params:
        return {name: getattr(self, _key(name)) for name in self.names}


def _key(name: str) -> str:
    return "mask_" + name.replace(".", "_")
