"""Meta-training iterations per second on a GPU, eager against ``train.cuda_graph: true``.

    python benchmarks/cuda_graph_training.py examples/metaticket_glyphs.yaml --iterations 300

Builds the config's Trainer twice per round (same seed), eager and graphed, alternating which
goes first, and times ``--iterations`` calls of ``train_step`` after ``--warmup`` untimed ones
(the graphed Trainer captures during its warm-up). Episodes are drawn as in training (from the
CPU, or from the device with ``-o train.data_on_device=true``). Prints iterations/s of each,
their ratio, and the largest relative difference between the two runs' final meta-parameters.
"""

from __future__ import annotations

import argparse
import time

import torch

import fewmask


def iterations_per_second(config: str, overrides: list[str], graph: bool, args) -> tuple:
    flags = [*overrides, "train.device=cuda", f"train.cuda_graph={str(graph).lower()}"]
    trainer = fewmask.build_trainer(config, [*flags, "train.progress=false"])
    for _ in range(args.warmup):
        trainer.train_step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.iterations):
        trainer.train_step()
    torch.cuda.synchronize()
    rate = args.iterations / (time.perf_counter() - start)
    return rate, {n: p.detach().clone() for n, p in trainer.meta_params.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("-o", dest="overrides", action="append", default=[])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rates: dict[bool, list[float]] = {False: [], True: []}
    params = {}
    for r in range(args.rounds):
        for graph in (False, True) if r % 2 == 0 else (True, False):
            rate, params[graph] = iterations_per_second(args.config, args.overrides, graph, args)
            rates[graph].append(rate)
    eager, graphed = max(rates[False]), max(rates[True])
    diff = max(
        ((params[True][n] - p).norm() / p.norm().clamp_min(1e-30)).item()
        for n, p in params[False].items()
    )
    print("| config | overrides | eager it/s | graphed it/s | ratio | max param diff |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.config} | {' '.join(args.overrides) or '-'} | {eager:.1f} | {graphed:.1f} |"
        f" {graphed / eager:.2f}x | {diff:.1e} |"
    )


if __name__ == "__main__":
    main()
