"""One whole meta-step captured into a CUDA graph and replayed (``train.cuda_graph``).

Small models are launch-bound on a GPU: the host spends longer issuing thousands of small
kernels than the GPU spends running them. Capturing :meth:`Engine.meta_step` once (every task,
the second-order inner loop, the query loss, the meta-gradient) and replaying it removes the
host from the loop: 5.5-7.5x on the 5-MLP on an H100 (docs/performance.md).

What a replay assumes, and :class:`GraphedMetaStep` keeps:

- the episodes have the shapes and dtypes of the captured ones (a batch that differs is
  captured anew);
- every tensor the step reads stays where it is: optimizers, schedulers and maskers change
  parameters, scores and buffers in place (``optimizer.step()``, IteRand's ``copy_``);
- a Python number read inside the step is frozen at capture (inner learning rates are fixed
  once the inner optimizer is attached; the outer schedule runs outside the graph).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fewmask.engine import Engine, StepResult
from fewmask.errors import GraphCaptureError
from fewmask.interfaces import Episode

WARMUP_CALLS = 3
"""Eager calls on a side stream before capture, as ``torch.cuda.graphs`` asks (lazy
initialisation, cuDNN autotuning and allocator warm-up happen outside the graph)."""


class GraphedMetaStep:
    """``engine.meta_step`` on a CUDA device, replayed from a graph captured at the first call.

    Each call copies the episodes into the graph's input buffers on the device, replays, and
    returns the graph's output tensors: they are overwritten by the next call, so read or
    clone them before it. Single process only (under torchrun the step all-reduces).

    Example::

        step = GraphedMetaStep(engine)       # the engine's model is on a CUDA device
        result = step(episodes)              # captured now; later calls replay
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple | None = None
        self._inputs: list[Episode] = []
        self._result: StepResult | None = None

    def __call__(self, episodes: Sequence[Episode]) -> StepResult:
        key = tuple((tuple(t.shape), t.dtype) for e in episodes for t in e)
        if self._graph is None or key != self._key:
            self._capture(episodes)
            self._key = key
        else:
            for static, episode in zip(self._inputs, episodes):
                for dst, src in zip(static, episode):
                    dst.copy_(src, non_blocking=True)
        self._graph.replay()
        return self._result

    def _capture(self, episodes: Sequence[Episode]) -> None:
        device = next(iter(self.engine.backbone.parameters())).device
        if device.type != "cuda":
            raise RuntimeError(f"GraphedMetaStep needs a CUDA device; the model is on {device}")
        self._graph = self._result = None  # free the old graph's pool first
        self._inputs = [Episode(*(t.to(device).clone() for t in e)) for e in episodes]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.engine.meta_step(self._inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._result = self.engine.meta_step(self._inputs)
        except RuntimeError as exc:
            self._result = None
            cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GraphCaptureError(
                "train.cuda_graph: the meta-step could not be captured into a CUDA graph "
                f"({cause}); a component probably reads a tensor's value on the host inside "
                "the step (.item(), a branch on a tensor's value); train without "
                "train.cuda_graph"
            ) from exc
        self._graph = graph
        self.captures += 1
