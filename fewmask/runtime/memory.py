"""Memory a run needs, estimated before anything is allocated, against what the device has.

The backbone is built on PyTorch's ``meta`` device (shapes only, no memory, no random draws)
and one forward pass there measures its layers' outputs per image. From these and the episode
sizes, :func:`estimate_memory` gives a *lower bound* of the training footprint: the weights and
one more copy of them (their gradients, or the scores), the largest layer output of one query
pass, one meta-batch of episodes (as drawn, and in the run's dtype, as the engine converts
the whole batch at once). A run whose lower bound exceeds what
:func:`available_memory` finds free on the training device cannot fit, and :func:`check_fits`
refuses it with a :class:`ResourceError` that shows the estimate, instead of a failure deep in
the allocator (or the machine swapping to a halt). A run under the bound may still not fit:
the bound refuses no run that would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch
from torch import nn

from fewmask.errors import ResourceError


@attrs.frozen
class MemoryEstimate:
    """Bytes a meta-training step needs at least."""

    parameters: int
    """Number of backbone parameters."""
    parameter_bytes: int
    """The weights and one more copy (their gradients, or the scores)."""
    activation_bytes: int
    """The largest layer output of one query pass (``ways * queries`` images)."""
    episode_bytes: int
    """One meta-batch of episodes as drawn (uint8) and as computed on (the run's dtype)."""

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.activation_bytes + self.episode_bytes

    def describe(self) -> str:
        return (
            f"at least {_size(self.total)} (a backbone of {self.parameters:,} parameters and "
            f"their gradients: {_size(self.parameter_bytes)}; its largest layer output for one "
            f"query set: {_size(self.activation_bytes)}; one meta-batch of episodes: "
            f"{_size(self.episode_bytes)})"
        )


def estimate_memory(
    build_backbone: Callable[[], nn.Module],
    input_shape: Sequence[int],
    *,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    inner_steps: int,
    dtype: torch.dtype,
) -> MemoryEstimate | None:
    """The lower bound, or None when the backbone cannot be built or run on the meta device.

    ``inner_steps`` is accepted for the record; the bound leaves out what depends on it (fast
    weights, activations kept for second order), which activation checkpointing or first-order
    steps may avoid."""
    rng = torch.get_rng_state()  # meta tensors draw nothing; kept exactly as it was regardless
    try:
        with torch.device("meta"):
            model = build_backbone()
            parameters = sum(p.numel() for p in model.parameters())
            largest = _largest_output_per_image(model, input_shape, dtype)
    except Exception:  # a backbone that needs real memory or data to be built: no estimate
        return None
    finally:
        torch.set_rng_state(rng)
    item = torch.empty((), dtype=dtype).element_size()
    return MemoryEstimate(
        parameters=parameters,
        parameter_bytes=2 * parameters * item,
        activation_bytes=largest * item * ways * queries,
        # as drawn (uint8), and the copy in the run's dtype the engine makes of the whole batch
        episode_bytes=meta_batch * ways * (shots + queries) * math.prod(input_shape) * (1 + item),
    )


def _largest_output_per_image(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype
) -> int:
    """Elements of the largest output of any layer for one image (a batch of 2, on the meta
    device)."""
    largest = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal largest
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                largest = max(largest, tensor.numel())

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        model.to(dtype)
        with torch.no_grad():  # the same shapes; no activation checkpointing machinery
            model(torch.empty(2, *input_shape, dtype=dtype, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return largest // 2


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on ``device`` (None: unknown). On the CPU: the smallest of
    the kernel's available memory, the cgroup's room and the address-space limit's room."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except RuntimeError:
            return None
    if device.type != "cpu":
        return None
    limits = [_meminfo_available(), _cgroup_room(), _address_space_room()]
    known = [x for x in limits if x is not None]
    return min(known) if known else None


def check_fits(estimate: MemoryEstimate | None, device: torch.device) -> None:
    """Raise ResourceError when the estimate exceeds the memory free on ``device``."""
    if estimate is None:
        return
    free = available_memory(device)
    if free is None or estimate.total <= free:
        return
    raise ResourceError(
        f"the run needs {estimate.describe()}, more than the {_size(free)} available on "
        f"{device}; make the backbone, ways, shots, queries, inner steps or meta_batch_size "
        "smaller, or train on a device with more memory"
    )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    folder = Path("/sys/fs/cgroup")
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def _address_space_room() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"
