"""Time Meta-ticket meta-training iterations with 1 and with 2 (or more) CPU threads, per model.

    python benchmarks/threads.py                        # the default cases, 1 vs 2 threads
    python benchmarks/threads.py --cases mlp-1shot --threads 1 2 4 --seconds 20

Each (case, thread count) runs in a fresh process that sets ``torch.set_num_threads`` first, builds
a Trainer from registered names on random uint8 images of the case's shape (the same compute as a
real data set of that shape), runs two warm-up iterations, then ``Trainer.train_step`` until
``--seconds`` have passed (at least ``--min-iterations``). Thread counts alternate within each
repeat, so a change in the machine's load hits both alike; the table gives the median seconds per
iteration over the repeats, and the multiply-adds per task that ``train.threads: auto`` compares
with :data:`fewmask.runtime.threads.SMALL_WORK` (docs/performance.md holds the measured numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = {  # name: (backbone, input shape, shots, queries)
    "mlp-1shot": ("omniglot_mlp", (1, 28, 28), 1, 1),
    "mlp-5shot": ("omniglot_mlp", (1, 28, 28), 5, 5),
    "conv4-28-1shot": ("conv4", (1, 28, 28), 1, 1),
    "conv4-84-5shot": ("conv4", (3, 84, 84), 5, 5),
}
DEFAULT_CASES = ("mlp-1shot", "mlp-5shot", "conv4-28-1shot")


def measure(case: str, threads: int, seconds: float, min_iterations: int) -> dict:
    """Seconds per meta-iteration of ``case`` on ``threads`` threads (run in this process)."""
    import torch

    torch.set_num_threads(threads)
    from fewmask import TrainConfig, Trainer, create
    from fewmask.runtime.threads import forward_macs, task_images
    from fewmask.testing import make_dataset

    name, shape, shots, queries = CASES[case]
    data = {"train": make_dataset(classes=20, per_class=shots + queries + 2, shape=shape)}
    sampler = create("sampler", "episodic", {"ways": 5, "shots": shots, "queries": queries})
    backbone = create("backbone", name, {}, input_shape=shape, num_classes=5)
    work = forward_macs(backbone, shape) * task_images(sampler)
    trainer = Trainer(
        backbone,
        create("masker", "metaticket"),
        create("inner", "sgd", {"lr": 0.4}),
        create("objective", "metaticket"),
        sampler,
        data,
        TrainConfig(iterations=10**6, progress=False, threads=threads),
    )
    for _ in range(2):
        trainer.train_step()
    count, start = 0, time.perf_counter()
    while count < min_iterations or time.perf_counter() - start < seconds:
        trainer.train_step()
        count += 1
    elapsed = time.perf_counter() - start
    return {"seconds_per_iteration": elapsed / count, "iterations": count, "work": work}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=list(CASES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per run")
    parser.add_argument("--min-iterations", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.one[0], int(args.one[1]), args.seconds, args.min_iterations)
        print(json.dumps(result))
        return
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    print(
        f"| case | multiply-adds per task | {' | '.join(f'{t} thr s/it' for t in args.threads)} "
        f"| 1 vs {args.threads[-1]} |"
    )
    print("|---|---|" + "---|" * len(args.threads) + "---|")
    for case in args.cases:
        times: dict[int, list[float]] = {t: [] for t in args.threads}
        work = 0
        for _ in range(args.repeats):
            for t in args.threads:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    case,
                    str(t),
                    "--seconds",
                    str(args.seconds),
                    "--min-iterations",
                    str(args.min_iterations),
                ]
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[t].append(result["seconds_per_iteration"])
                work = result["work"]
        medians = [statistics.median(times[t]) for t in args.threads]
        ratio = medians[-1] / medians[0]
        print(
            f"| {case} | {work / 1e6:.1f}M | {' | '.join(f'{m:.4f}' for m in medians)} "
            f"| {ratio:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
