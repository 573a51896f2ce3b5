"""Activation checkpointing that stays exact under ``functional_call`` and second-order autograd.

``checkpointed(block, x)`` computes ``block(x)`` but keeps only ``x`` and the block's tensors; the
activations inside are recomputed when the backward pass needs them. The tensors bound to the
block *at call time* (the masked fast weights of a task, under ``functional_call``) are handed to
the checkpoint as explicit inputs, so the recomputation uses them and not whatever the module
holds by the time the backward runs. Non-reentrant checkpointing supports ``create_graph``, so
second-order meta-gradients are unchanged (tested against the plain path in float64).

It saves most in the query pass (the largest batch, differentiated once). In the support pass
the inner gradient is taken with ``create_graph=True``, which keeps the recomputed activations
alive for the second-order term anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint


def checkpointed(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)``, recomputed in the backward pass instead of stored (plain call without grad)."""
    if not torch.is_grad_enabled():
        return block(x)
    bound = list(block.named_parameters())  # under functional_call: the task's tensors
    names, tensors = [n for n, _ in bound], [t for _, t in bound]

    def run(inputs: Tensor, *bound: Tensor) -> Tensor:
        return functional_call(block, dict(zip(names, bound)), (inputs,))

    return checkpoint(run, x, *tensors, use_reentrant=False)
