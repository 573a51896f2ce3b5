"""The small runtime handle a Trainer computes with: its device, its rank, and the collectives.

One process trains alone; under ``torchrun`` the ranks split each meta-batch and meet in the
collectives below (:mod:`fewmask.runtime.distributed` does the communication). The Trainer asks
only this handle, never the process group itself, so a run's process setup has one owner
(:class:`fewmask.runtime.run.Run`, or :meth:`Process.start` for a Trainer composed in Python).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.runtime import distributed


@attrs.frozen
class Process:
    """This process's place in a run: ``device``, ``rank`` of ``world_size``."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @classmethod
    def start(cls, device: str | torch.device) -> Process:
        """Set up this process for ``device``; under torchrun, join the process group first
        (a CUDA device becomes ``cuda:LOCAL_RANK``). Calling it again only returns the handle."""
        device = distributed.setup(device)
        return cls(device, distributed.rank(), distributed.world_size())

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that logs, prints and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing in one process)."""
        if self.world_size > 1:
            distributed.barrier()

    def share(self, count: int) -> range:
        """The indices of ``count`` items this rank handles."""
        return distributed.share(count, self.rank, self.world_size)

    def reduce(self, tensor: Tensor) -> Tensor:
        """The elementwise sum of ``tensor`` over all ranks (``tensor`` itself in one process)."""
        return distributed.sum_over_ranks(tensor) if self.world_size > 1 else tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable), on every rank."""
        return distributed.broadcast_object(obj) if self.world_size > 1 else obj

    def broadcast_tensors(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values."""
        if self.world_size > 1:
            distributed.broadcast_tensors(tensors)
