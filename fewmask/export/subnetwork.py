"""A subnetwork taken out of a run: the backbone, its fixed masks, its inner loop, on the CPU.

Every export format is written from a :class:`Subnetwork` and loads back into one, so
meta-testing, adapting and re-exporting treat a run and its exports alike. The network it
computes is ``backbone`` run with every masked weight ``W`` replaced by ``W * mask``
(:func:`masked_state`); :func:`weights_digest` is the SHA-256 that every format stores and
verifies on loading.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.interfaces import Backbone, InnerOptimizer, Masker, MetaObjective, Params


class FixedMasks(Masker):
    """A masker whose masks are given (an export's): no scores, nothing to learn."""

    def __init__(self, masks: Mapping[str, Tensor]):
        super().__init__()
        self._names = list(masks)
        for i, mask in enumerate(masks.values()):
            self.register_buffer(f"mask{i}", mask.detach().clone())

    def attach(self, backbone: Backbone) -> None:
        missing = [n for n in self._names if n not in dict(backbone.named_parameters())]
        if missing:
            raise ValueError(f"the backbone has no parameter {missing[0]!r} to mask")

    def masks(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"mask{i}") for i, name in enumerate(self._names)}


@attrs.define(eq=False)
class Subnetwork:
    """A meta-learned (sub)network, ready to adapt to a task.

    Attributes:
        backbone: the network on the CPU; masked weights may hold any value where the mask is 0.
        masks: ``{parameter name: 0/1 tensor}`` in the backbone's dtype; ``{}`` for a dense
            (MAML) network.
        inner: the inner optimizer of the run, attached to ``backbone`` (its test steps adapt).
        objective: the run's objective (its support loss drives adaptation).
        config: the run's config as plain data (``seed`` included).
        input_shape: the image shape ``(C, H, W)`` it takes.
        ways: the outputs of its head.
        iteration: the meta-training iteration it comes from.
        source: where it was read from (messages).
    """

    backbone: Backbone
    masks: dict[str, Tensor]
    inner: InnerOptimizer
    objective: MetaObjective
    config: dict[str, Any]
    input_shape: tuple[int, int, int]
    ways: int
    iteration: int
    source: str = ""

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def dense(self) -> bool:
        """Whether nothing is masked (a MAML-style run)."""
        return not self.masks

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.backbone.parameters())).dtype

    def masked_state(self) -> dict[str, Tensor]:
        """:func:`masked_state` of this network."""
        return masked_state(self.backbone, self.masks)

    def digest(self) -> str:
        """:func:`weights_digest` of this network."""
        return weights_digest(self.masked_state(), self.masks)


def masked_state(backbone: Backbone, masks: Params) -> dict[str, Tensor]:
    """The backbone's state dict with every masked weight as ``W * mask`` (a pruned entry is
    ``+0.0`` whatever the sign of ``W``), detached, on the CPU."""
    state = {}
    for name, tensor in backbone.state_dict().items():
        tensor = tensor.detach().cpu()
        if name in masks:
            tensor = tensor * masks[name].to(tensor.dtype).cpu() + 0.0  # -0.0 + 0.0 = +0.0
        state[name] = tensor.contiguous()
    return state


def weights_digest(state: Mapping[str, Tensor], masks: Params) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (sorted by name), then every
    mask's bits: what a loaded export must reproduce exactly."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        head = {"name": name, "dtype": str(tensor.dtype), "shape": list(tensor.shape)}
        digest.update(json.dumps(head).encode())
        digest.update(tensor_bytes(tensor))
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(tensor_bytes(masks[name].detach().cpu().bool()))
    return digest.hexdigest()


def tensor_bytes(tensor: Tensor) -> bytes:
    """The raw bytes of a tensor (native byte order), any dtype."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    """The inverse of :func:`tensor_bytes`."""
    raw = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if data
        else torch.empty(0, dtype=torch.uint8)
    )
    if dtype == torch.bool:
        return raw.to(torch.bool).reshape(shape)
    return raw.view(dtype).reshape(shape).clone()


def density(masks: Params) -> tuple[dict[str, float], float]:
    """Fraction of kept entries per masked parameter, and over all of them."""
    per_layer = {n: m.float().mean().item() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    kept = sum(int((m != 0).sum()) for m in masks.values())
    return per_layer, (kept / total if total else 1.0)
