"""Episodes per second of the ``episodic`` sampler, from in-memory uint8 tensors.

    python benchmarks/episodes.py                   # the dataset in CPU memory, one core
    python benchmarks/episodes.py --device cuda     # the dataset held on the GPU

5-way 5-shot 15-query episodes (100 images each) at 28x28x1 (1,000 classes x 20 images, the
glyph set's shape) and 84x84x3 (64 classes x 600, miniImageNet's meta-train shape), drawn 16 at
a time with ``sample_many`` (the Trainer draws a meta-batch, or 100 evaluation episodes, per
call). With ``--device`` the dataset is moved there once (``FewShotDataset.to``, as
``train.data_on_device`` does): the random draws stay on the CPU generator and the images are
gathered on the device. Columns: episodes as the sampler returns them (uint8 images gathered
into new tensors), and the same episodes also converted to float32 in [0, 1] on the device
(``Episode.to``). On a GPU every draw ends with a synchronisation, so the rates include it.

On the CPU a third column draws the same uint8 episodes from the same images written through
fewmask's dataset cache and read back as loaders return them: memory-mapped from the cache's
``.npy`` file (after the warm-up its pages are in the page cache). The in-memory and mapped
windows alternate (``--rounds``) and each column is the median, so the ratio compares the two
under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fewmask import create
from fewmask.datasets import cache
from fewmask.interfaces import FewShotDataset
from fewmask.testing import make_dataset

TARGET = 20_000
SHAPES = [((1, 28, 28), 1000, 20), ((3, 84, 84), 64, 600)]  # image shape, classes, per class
TINY_SHAPES = [((1, 28, 28), 30, 20), ((3, 84, 84), 8, 20)]


def mapped(data: FewShotDataset, folder: Path) -> FewShotDataset:
    """``data`` written to fewmask's cache in ``folder`` and read back memory-mapped."""
    path = folder / "bench.pt"
    cache.write_cache(path, "bench", (data.images, data.labels, list(data.class_names)))
    arrays = cache.read_cache(path, "bench")
    assert arrays is not None and torch.equal(arrays[0], data.images)
    return FewShotDataset(arrays[0], arrays[1], tuple(arrays[2]), f"{data.name} (mapped)")


def rate(
    shape, classes, per_class, to_float: bool, device="cpu", batch=16, seconds=2.0, data=None
) -> float:
    """Episodes per second drawn from a ``classes`` x ``per_class`` dataset held on ``device``
    (or from ``data``)."""
    if data is None:
        data = make_dataset(classes=classes, per_class=per_class, shape=shape).to(device)
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 5, "queries": 15})
    generator = torch.Generator().manual_seed(0)
    cuda = torch.device(device).type == "cuda"

    def draw():
        episodes = sampler.sample_many(data, generator, batch)
        if to_float:
            episodes = [e.to(device) for e in episodes]
        if cuda:
            torch.cuda.synchronize(device)
        return episodes

    draw()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        draw()
        count += batch
    return count / (time.perf_counter() - start)


def measure(
    device: str = "cpu", seconds: float = 2.0, tiny: bool = False, rounds: int = 3
) -> list[dict]:
    """One row per image shape: uint8 and float episodes per second, gathered GB/s, and on
    the CPU uint8 episodes per second from the memory-mapped cache (medians of ``rounds``)."""
    rows = []
    for shape, classes, per_class in TINY_SHAPES if tiny else SHAPES:
        data = make_dataset(classes=classes, per_class=per_class, shape=shape).to(device)
        with tempfile.TemporaryDirectory() as folder:
            on_disk = mapped(data, Path(folder)) if device == "cpu" else None
            raws, maps = [], []
            for _ in range(rounds):
                raws.append(
                    rate(shape, classes, per_class, False, device, seconds=seconds, data=data)
                )
                if on_disk is not None:
                    maps.append(
                        rate(
                            shape, classes, per_class, False, device, seconds=seconds, data=on_disk
                        )
                    )
            del on_disk
        raw = statistics.median(raws)
        flt = rate(shape, classes, per_class, True, device, seconds=seconds, data=data)
        rows.append(
            {
                "images": "x".join(map(str, shape)),
                "device": device,
                "uint8_per_s": raw,
                "float_per_s": flt,
                "mapped_uint8_per_s": statistics.median(maps) if maps else None,
                "gb_per_s": raw * 100 * shape[0] * shape[1] * shape[2] / 1e9,  # uint8 gathered
                "target_per_s": TARGET,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the dataset is held (cpu, cuda)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per figure")
    parser.add_argument("--tiny", action="store_true", help="small datasets (a smoke test)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per column")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = measure(args.device, args.seconds, args.tiny, args.rounds)
    print(
        f"{'images':>9}  {'device':>6}  {'uint8 eps/s':>11}  {'vs target':>9}  {'GB/s':>5}  "
        f"{'float eps/s':>11}  {'vs target':>9}  {'mapped eps/s':>12}  {'mapped/RAM':>10}"
    )
    for r in rows:
        m = r["mapped_uint8_per_s"]
        mapped_text = f"{m:12.0f}  {m / r['uint8_per_s']:9.2f}x" if m else f"{'-':>12}  {'-':>10}"
        print(
            f"{r['images']:>9}  {r['device']:>6}  {r['uint8_per_s']:11.0f}  "
            f"{r['uint8_per_s'] / TARGET:8.2f}x  {r['gb_per_s']:5.1f}  "
            f"{r['float_per_s']:11.0f}  {r['float_per_s'] / TARGET:8.2f}x  {mapped_text}"
        )
    print(f"target: {TARGET:,} episodes/s on one core")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
