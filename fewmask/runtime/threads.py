"""``train.threads``: how many CPU threads torch uses for a run, chosen by model size.

On the CPU, splitting one operation across threads pays only when the operation is large. The
paper's MLPs on 5-way 1-shot episodes multiply matrices of a few rows, and one thread is faster
than two; a Conv4 on the same episodes does millions of multiply-adds per layer, and two threads
are faster (measured with ``benchmarks/threads.py``; the numbers are in docs/performance.md).

``auto`` therefore estimates the work of one task's forward pass (multiply-adds of every Linear and
Conv layer for the task's support and query images, without computing anything: the shapes come
from a forward pass on the ``meta`` device) and uses

- the ``OMP_NUM_THREADS`` count (torch's current one) when that variable is set: the user chose;
- torch's current count on a GPU (the CPU threads hardly matter there);
- one thread when the work is below :data:`SMALL_WORK`;
- otherwise torch's default (one per physical core), less the cores other processes keep busy
  (the one-minute load average): threads that wait for a busy core stall every operation, and on
  the project's shared 2-core machine two threads were 2.7-19x slower than one at every size.

An integer is used as it is. The choice is process-wide (``torch.set_num_threads``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import attrs
import torch
from torch import nn

SMALL_WORK = 20_000_000
"""Below this many multiply-adds per task forward, ``auto`` uses one thread (docs/performance.md:
the Omniglot MLP on 5-way 1-shot does about 2.2 million, a Conv4 on the same 28x28 episodes
about 60 million)."""


@attrs.frozen
class ThreadChoice:
    """The thread count a run uses and why (recorded in its results and TensorBoard config)."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"{self.threads} CPU thread{'s' if self.threads != 1 else ''} ({self.reason})"


def forward_macs(backbone: nn.Module, input_shape: Sequence[int]) -> int | None:
    """Multiply-adds of one image's forward pass through the Linear and Conv layers, from shapes
    alone (a forward pass on the ``meta`` device: no memory, no random draws, no state change).

    ``None`` when the backbone cannot run on the ``meta`` device."""
    total = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.Linear):
            total += module.weight.numel() * (output.numel() // output.shape[-1])
        else:  # convolution: every weight once per output position
            total += module.weight.numel() * (output[0, 0].numel() * output.shape[0])

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(count) for m in backbone.modules() if isinstance(m, layers)]
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]
    }
    batch = 2  # BatchNorm1d needs more than one value per channel
    try:
        with torch.no_grad():
            torch.func.functional_call(
                backbone, state, (torch.empty(batch, *input_shape, device="meta"),)
            )
    except Exception:  # an operation without a meta kernel: no estimate
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return total // batch


def choose_threads(
    setting: str | int,
    device: torch.device,
    work: int | None,
    default: int | None = None,
    load: float | None = None,
) -> ThreadChoice:
    """The thread count for ``setting`` (``"auto"`` or a count), given the multiply-adds of one
    task's forward pass (``work``; ``None``: unknown). ``default`` is torch's default count (one
    per physical core) and ``load`` the one-minute load average; both are read from the system
    when not given."""
    if not isinstance(setting, str):
        return ThreadChoice(int(setting), "train.threads")
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(torch.get_num_threads(), "auto: OMP_NUM_THREADS is set")
    if device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), f"auto: the model runs on {device.type}")
    default = default or _default_threads()
    size = "model size unknown" if work is None else f"{work / 1e6:.1f}M multiply-adds per task"
    if work is not None and (work < SMALL_WORK or default == 1):
        return ThreadChoice(1, f"auto: small model, {size}")
    load = _load() if load is None else load
    idle = max(1, min(default, round(default - load)))
    if idle < default:
        return ThreadChoice(idle, f"auto: {size}, {default} cores with load {load:.1f}")
    return ThreadChoice(default, f"auto: {size}")


def _load() -> float:
    """The one-minute load average (0 where the system does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _default_threads() -> int:
    """torch's default intra-op count (one per physical core). ``torch.set_num_threads`` calls
    change the current count but not the inter-op pool, which starts at that same default."""
    return torch.get_num_interop_threads()


def task_images(sampler: object) -> int:
    """Images in one task: ``ways * (shots + queries)`` for an N-way K-shot sampler (else 1)."""
    ways = getattr(sampler, "ways", None)
    shots = getattr(sampler, "shots", None)
    queries = getattr(sampler, "queries", None) or shots
    if not all(isinstance(v, int) for v in (ways, shots, queries)):
        return 1
    return ways * (shots + queries)  # type: ignore[operator]


def apply_threads(
    setting: str | int, backbone: nn.Module, input_shape: Sequence[int], sampler: object, device
) -> ThreadChoice:
    """Choose the count for a run and set it (``torch.set_num_threads``) when it differs."""
    work = None
    if setting == "auto" and device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        macs = forward_macs(backbone, input_shape)
        work = None if macs is None else macs * task_images(sampler)
    choice = choose_threads(setting, device, work)
    if choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    return choice
