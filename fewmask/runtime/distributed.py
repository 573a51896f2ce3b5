"""Meta-batch data parallelism over the processes ``torchrun`` starts (one node or many).

Every rank holds the whole model and draws the same episodes from the same seeded generator. Each
rank adapts and differentiates only its share of the meta-batch's tasks; one all-reduce turns the
ranks' meta-gradients into the mean over all tasks, so every rank takes the same optimizer step.
Outside a torchrun launch every helper answers for a single process and communicates nothing.

Example::

    device = setup("cuda")            # joins the process group; cuda:LOCAL_RANK under torchrun
    for i in share(len(episodes)):    # this rank's tasks
        ...
    grads, stats = reduce_task_means(params, grads, stats, count=len(mine), total=len(episodes))
    destroy()

:class:`fewmask.engine.Engine` does this inside ``meta_step``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import reduce
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
"""Set by ``torchrun`` for every process it starts."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (its environment variables are set)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def active() -> bool:
    """Whether a process group is initialised (by :func:`setup` or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes training together (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that logs, prints and writes files."""
    return rank() == 0


def setup(device: str | torch.device) -> torch.device:
    """The device this process computes on; under torchrun, join the process group first.

    Under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` and the backend is NCCL; any other
    device uses gloo. Calling it again (or after the caller initialised the group) only returns
    the device.
    """
    device = torch.device(device)
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not active():
        cuda = device.type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return device


def destroy() -> None:
    """Leave the process group, if one is initialised."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if world_size() > 1:
        dist.barrier()


def share(count: int, rank_: int | None = None, world: int | None = None) -> range:
    """Indices of the ``count`` items rank ``rank_`` handles: contiguous, sizes differ by <= 1.

    >>> [list(share(5, r, 2)) for r in range(2)]
    [[0, 1, 2], [3, 4]]
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(count, world)
    start = rank_ * base + min(rank_, extra)
    return range(start, start + base + (rank_ < extra))


def _comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_task_means(
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    stats: Sequence[float],
    count: int,
    total: int,
) -> tuple[dict[str, Tensor], list[float]]:
    """Turn every rank's means over its own ``count`` tasks into means over all ``total`` tasks.

    ``grads`` holds this rank's mean meta-gradients by name of ``params`` (a name without a
    gradient is left out; a rank without tasks has none); ``stats`` its mean loss and metrics.
    They are weighted by ``count / total`` and summed over ranks in one all-reduce. A gradient
    that is missing on every rank stays missing (the optimizer skips it, as in one process).
    Returns the gradients and the stats over all tasks; a NaN or Inf on any rank reaches every
    rank, so all of them stop together.
    """
    if world_size() == 1 or not params:
        return dict(grads), list(stats)
    weight = count / total
    dtype = reduce(torch.promote_types, (p.dtype for p in params.values()))
    device = _comm_device()
    parts = [
        (grads[n] * weight if n in grads else torch.zeros_like(p)).reshape(-1)
        for n, p in params.items()
    ]
    present = [float(n in grads) for n in params]
    sums = [value * count for value in stats] if count else [0.0] * len(stats)
    extra = torch.tensor([*present, *sums], dtype=dtype)
    flat = torch.cat([*(x.to(device, dtype) for x in parts), extra.to(device)])
    dist.all_reduce(flat)
    tail = flat[-len(extra) :].tolist()
    reduced, offset = {}, 0
    for (name, param), seen in zip(params.items(), tail):
        size = param.numel()
        if seen:
            reduced[name] = (
                flat[offset : offset + size].view_as(param).to(param.device, param.dtype)
            )
        offset += size
    return reduced, [value / total for value in tail[len(params) :]]


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The elementwise sum of ``tensor`` over all ranks (``tensor`` itself in one process).

    Ranks that fill disjoint entries and leave the rest zero gather exactly: ``x + 0 == x``.
    """
    if world_size() == 1:
        return tensor
    buffer = tensor.to(_comm_device(), copy=True)
    dist.all_reduce(buffer)
    return buffer.to(tensor.device)


def broadcast_tensors(tensors: Iterable[Tensor]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values."""
    if world_size() == 1:
        return
    device = _comm_device()
    for tensor in tensors:
        if tensor.device == device:
            dist.broadcast(tensor.detach(), 0)  # shares the storage: written in place
            continue
        buffer = tensor.detach().to(device)
        dist.broadcast(buffer, 0)
        with torch.no_grad():
            tensor.copy_(buffer)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable), on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0, device=_comm_device())
    return box[0]


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Restore torch's global RNG (CPU, and ``device`` if CUDA) on exit; with several ranks only.

    Ranks run different tasks, so randomness drawn inside a task (dropout) would leave their
    global RNGs apart, and hooks that draw later (IteRand) would change the ranks' models apart.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices, enabled=world_size() > 1, device_type=device.type):
        yield
