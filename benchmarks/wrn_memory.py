"""Estimate the activation memory of one second-order WRN-28-10 task at 84x84, on a CPU.

Runs one real task (5-way 5-shot 15-query, one inner step) at a smaller image size and sums the
bytes of the distinct storages autograd saves for the backward pass. Storages of a parameter's
size (weights, masks, fast weights) do not depend on the image size; every other one is an
activation and scales with H x W, so the 84x84 figure is ``fixed + activations * (84 / side)^2``.
A lower bound of
a GPU's peak (no cuDNN workspace, no allocator rounding, no short-lived temporaries); on a GPU,
``benchmarks/meta_step.py --device cuda --models wrn28_10`` measures the real peak.

    OMP_NUM_THREADS=1 python benchmarks/wrn_memory.py [--side 28]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from fewmask import Engine, Episode, create

CASES = [  # masker, checkpoint_blocks, first_order
    ("dense", False, False),
    ("metaticket", False, False),
    ("dense", True, False),
    ("metaticket", True, False),
    ("dense", False, True),
]


def saved_bytes(
    masker_name: str, checkpoint: bool, first_order: bool, side: int
) -> tuple[int, int]:
    """Bytes autograd saves during one task's meta-gradient: (parameter-sized, activations)."""
    torch.manual_seed(0)
    shape = (3, side, side)
    backbone = create(
        "backbone", "wrn28_10", {"checkpoint_blocks": checkpoint}, input_shape=shape, num_classes=5
    )
    masker = create("masker", masker_name)
    masker.attach(backbone)
    inner = create("inner_optimizer", "sgd", {"lr": 0.3, "steps": 1, "first_order": first_order})
    objective = create("objective", "metaticket" if masker.meta_parameters() else "maml")
    engine = Engine(backbone, masker, inner, objective)
    labels = torch.arange(5)
    episode = Episode(
        torch.rand(25, *shape), labels.repeat(5), torch.rand(75, *shape), labels.repeat(15)
    )
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[StorageWeakRef(storage).cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.meta_step([episode])
    sizes = {p.numel() * p.element_size() for p in backbone.parameters()}
    fixed = sum(b for b in seen.values() if b in sizes)
    return fixed, sum(seen.values()) - fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=28, help="image size of the real run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scale = (84 / args.side) ** 2
    size = f"{args.side}x{args.side}"
    header = "method | first order | checkpoint_blocks | parameter-sized"
    print(f"| {header} | activations at {size} | estimate at 84x84 |")
    print("|---|---|---|---|---|---|")
    for masker, checkpoint, first_order in CASES:
        start = time.perf_counter()
        fixed, activations = saved_bytes(masker, checkpoint, first_order, args.side)
        print(
            f"| {masker} | {first_order} | {checkpoint} | {fixed / 2**30:.2f} GiB | "
            f"{activations / 2**30:.2f} GiB | {(fixed + activations * scale) / 2**30:.1f} GiB |"
            f"  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
