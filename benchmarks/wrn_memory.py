"""Memory of a second-order WRN-28-10 meta-step at 84x84: estimated on a CPU, measured on a GPU.

    OMP_NUM_THREADS=1 python benchmarks/wrn_memory.py [--side 28]   # CPU estimate
    python benchmarks/wrn_memory.py --device cuda                    # GPU peak, 84x84, B=4

CPU: runs one real task (5-way 5-shot 15-query, one inner step) at a smaller image size and sums
the bytes of the distinct storages autograd saves for the backward pass. Storages of a
parameter's size (weights, masks, fast weights) do not depend on the image size; every other one
is an activation and scales with H x W, so the 84x84 figure is
``fixed + activations * (84 / side)^2``. A lower bound of a GPU's peak (no cuDNN workspace, no
allocator rounding, no short-lived temporaries).

CUDA: one whole meta-step (meta-batch ``--meta-batch``, default 4) at ``--side`` (default 84) on
the device, with ``torch.cuda.max_memory_allocated`` over it: the real peak, model included.
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
GPU_LIMIT_GIB = 80.0
"""The target: WRN-28-10, 84x84, meta-batch 4, second order, on one 80 GB GPU."""


def build_engine(
    masker_name: str, checkpoint: bool, first_order: bool, shape, device="cpu", options=None
) -> Engine:
    """WRN-28-10 (or ``options``), ``masker_name``, one SGD inner step at rate 0.3."""
    torch.manual_seed(0)
    options = {**(options or {}), "checkpoint_blocks": checkpoint}
    backbone = create("backbone", "wrn28_10", options, input_shape=shape, num_classes=5)
    masker = create("masker", masker_name)
    masker.attach(backbone)
    backbone.to(device)
    masker.to(device)
    inner = create("inner_optimizer", "sgd", {"lr": 0.3, "steps": 1, "first_order": first_order})
    objective = create("objective", "metaticket" if masker.meta_parameters() else "maml")
    return Engine(backbone, masker, inner, objective)


def episodes(shape, count: int, device="cpu") -> list[Episode]:
    """``count`` random 5-way 5-shot 15-query episodes on ``device``."""
    labels = torch.arange(5, device=device)

    def images(n):
        return torch.rand(n, *shape, device=device)

    return [
        Episode(images(25), labels.repeat(5), images(75), labels.repeat(15)) for _ in range(count)
    ]


def saved_bytes(
    masker_name: str, checkpoint: bool, first_order: bool, side: int
) -> tuple[int, int]:
    """Bytes autograd saves during one task's meta-gradient: (parameter-sized, activations)."""
    shape = (3, side, side)
    engine = build_engine(masker_name, checkpoint, first_order, shape)
    episode = episodes(shape, 1)[0]
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[StorageWeakRef(storage).cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine.meta_step([episode])
    sizes = {p.numel() * p.element_size() for p in engine.backbone.parameters()}
    fixed = sum(b for b in seen.values() if b in sizes)
    return fixed, sum(seen.values()) - fixed


def peak_memory(
    masker_name: str,
    checkpoint: bool,
    first_order: bool,
    side: int = 84,
    meta_batch: int = 4,
    device: str = "cuda",
    options: dict | None = None,
) -> dict:
    """One meta-step on ``device``: seconds, parameter memory and (CUDA) the peak allocated.

    On a CPU (the dry run of ``benchmarks/gpu_check.py``) the same step runs and the peak is
    None.
    """
    shape = (3, side, side)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    engine = build_engine(masker_name, checkpoint, first_order, shape, device, options)
    batch = episodes(shape, meta_batch, device)
    model_bytes = sum(t.numel() * t.element_size() for t in engine.backbone.parameters())
    model_bytes += sum(t.numel() * t.element_size() for t in engine.masker.parameters())
    start = time.perf_counter()
    result = engine.meta_step(batch)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    finite = bool(torch.isfinite(result.loss))
    del engine, batch, result
    return {
        "masker": masker_name,
        "checkpoint_blocks": checkpoint,
        "first_order": first_order,
        "side": side,
        "meta_batch": meta_batch,
        "device": device,
        "seconds": seconds,
        "model_gib": model_bytes / 2**30,
        "peak_gib": peak,
        "limit_gib": GPU_LIMIT_GIB,
        "finite": finite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu: estimate; cuda: measure the peak")
    parser.add_argument("--side", type=int, help="image size (default: 28 on CPU, 84 on CUDA)")
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per step (CUDA)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    side = args.side or (84 if cuda else 28)
    if cuda:
        size = f"{side}x{side}, B={args.meta_batch}"
        print(f"| method | first order | checkpoint_blocks | peak at {size} |")
        print("|---|---|---|---|")
        for masker, checkpoint, first_order in CASES:
            row = peak_memory(masker, checkpoint, first_order, side, args.meta_batch, args.device)
            print(
                f"| {masker} | {first_order} | {checkpoint} | {row['peak_gib']:.1f} GiB |"
                f"  ({row['seconds']:.1f} s)",
                flush=True,
            )
        return
    torch.set_num_threads(1)
    scale = (84 / side) ** 2
    size = f"{side}x{side}"
    header = "method | first order | checkpoint_blocks | parameter-sized"
    print(f"| {header} | activations at {size} | estimate at 84x84 |")
    print("|---|---|---|---|---|---|")
    for masker, checkpoint, first_order in CASES:
        start = time.perf_counter()
        fixed, activations = saved_bytes(masker, checkpoint, first_order, side)
        print(
            f"| {masker} | {first_order} | {checkpoint} | {fixed / 2**30:.2f} GiB | "
            f"{activations / 2**30:.2f} GiB | {(fixed + activations * scale) / 2**30:.1f} GiB |"
            f"  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
