"""Episodes per second of the ``episodic`` sampler, from in-memory uint8 tensors, on one core.

    python benchmarks/episodes.py

5-way 5-shot 15-query episodes (100 images each) at 28x28x1 (1,000 classes x 20 images, the
glyph set's shape) and 84x84x3 (64 classes x 600, miniImageNet's meta-train shape), drawn 16 at
a time with ``sample_many`` (the Trainer draws a meta-batch, or 100 evaluation episodes, per
call). Columns:
episodes as the sampler returns them (uint8 images gathered into new tensors), and the same
episodes also converted to float32 in [0, 1] on the CPU (on a GPU run this happens on the GPU).
"""

from __future__ import annotations

import time

import torch

from fewmask import create
from fewmask.testing import make_dataset

TARGET = 20_000


def rate(shape, classes, per_class, to_float: bool, batch=16, seconds=2.0) -> float:
    data = make_dataset(classes=classes, per_class=per_class, shape=shape)
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 5, "queries": 15})
    generator = torch.Generator().manual_seed(0)

    def draw():
        episodes = sampler.sample_many(data, generator, batch)
        if to_float:
            episodes = [e.to("cpu") for e in episodes]
        return episodes

    draw()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        draw()
        count += batch
    return count / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"{'images':>9}  {'uint8 eps/s':>11}  {'vs target':>9}  {'GB/s':>5}  "
        f"{'float eps/s':>11}  {'vs target':>9}"
    )
    for shape, classes, per_class in [((1, 28, 28), 1000, 20), ((3, 84, 84), 64, 600)]:
        raw = rate(shape, classes, per_class, to_float=False)
        flt = rate(shape, classes, per_class, to_float=True)
        size = "x".join(map(str, shape))
        gigabytes = raw * 100 * shape[0] * shape[1] * shape[2] / 1e9  # uint8 images gathered
        print(
            f"{size:>9}  {raw:11.0f}  {raw / TARGET:8.2f}x  {gigabytes:5.1f}  "
            f"{flt:11.0f}  {flt / TARGET:8.2f}x"
        )
    print(f"target: {TARGET:,} episodes/s on one core")


if __name__ == "__main__":
    main()
