"""Episodes per second of the ``episodic`` sampler, from in-memory uint8 tensors, on one core.

    python benchmarks/episodes.py

5-way 5-shot 15-query episodes (100 images each) at 28x28x1 (1,000 classes x 20 images, the
glyph set's shape) and 84x84x3 (64 classes x 600, miniImageNet's meta-train shape). Each
episode is returned as float images in [0, 1], ready for the model.
"""

from __future__ import annotations

import time

import torch

from fewmask import create
from fewmask.testing import make_dataset

TARGET = 20_000


def rate(shape, classes, per_class, seconds=2.0) -> float:
    data = make_dataset(classes=classes, per_class=per_class, shape=shape)
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 5, "queries": 15})
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # warm-up
        sampler.sample(data, generator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            sampler.sample(data, generator)
        count += 50
    return count / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'images':>10}  {'episodes/s':>10}  {'vs 20,000/s target':>18}  MB/s of float images")
    for shape, classes, per_class in [((1, 28, 28), 1000, 20), ((3, 84, 84), 64, 600)]:
        eps = rate(shape, classes, per_class)
        megabytes = eps * 100 * 4 * shape[0] * shape[1] * shape[2] / 1e6
        size = "x".join(map(str, shape))
        print(f"{size:>10}  {eps:10.0f}  {eps / TARGET:17.2f}x  {megabytes:.0f}")


if __name__ == "__main__":
    main()
