"""Probe: does one whole ``Engine.meta_step`` capture into a CUDA graph, and what does replay gain?

    python benchmarks/cuda_graph_probe.py --device cuda                 # mlp5, conv4, resnet12
    python benchmarks/cuda_graph_probe.py --tiny --device cpu           # eager path only (CI)

The same iteration as ``benchmarks/meta_step.py`` (5-way 5-shot 15-query, meta-batch 4, one
second-order inner SGD step, fixed-seed random inputs). Per model, algorithm and engine: the
eager ``meta_step`` timed (median of ``--repeats`` after ``--warmup``), then the same step
through :class:`fewmask.engine.graphs.GraphedMetaStep` (what ``train.cuda_graph`` trains with:
three warm-up calls on a side stream, capture with ``torch.cuda.graph``), its replays (the
episodes copied into the graph's inputs, then the replay) timed the same way. The
replay's gradients are compared with the eager ones (``||g_replay - g_eager|| / ||g_eager||``).
A capture that fails is reported with its error; the other rows still run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fewmask import Engine
from fewmask.engine.graphs import GraphedMetaStep
from fewmask.testing import engine_gradient

sys.path.insert(0, str(Path(__file__).parent))
from meta_step import DEFAULT_MODELS, build, engine_options, flat_grad, relative, set_precision


def timed(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe(model: str, algorithm: str, spec: str, args: argparse.Namespace) -> dict:
    backbone, masker, inner, objective, episodes = build(model, algorithm, args)
    engine = Engine(backbone, masker, inner, objective, engine_options(spec))
    row = {"model": model, "algorithm": algorithm, "engine": spec}
    eager_grad = flat_grad(engine_gradient(engine, episodes))
    row["eager_ms"] = 1e3 * timed(
        lambda: engine_gradient(engine, episodes), args.device, args.warmup, args.repeats
    )
    if not args.device.startswith("cuda"):
        row["capture"] = "needs CUDA"
        return row
    step = GraphedMetaStep(engine)  # what train.cuda_graph trains with

    def replay() -> list[torch.Tensor]:
        grads = step(episodes).grads
        return [grads.get(n, torch.zeros_like(p)) for n, p in engine.meta_params.items()]

    try:
        replayed = replay()  # captures, then replays once
        torch.cuda.synchronize()
        row["replay_vs_eager"] = relative(flat_grad(replayed), eager_grad)
        row["replay_ms"] = 1e3 * timed(replay, args.device, args.warmup, args.repeats)
        row["speedup"] = row["eager_ms"] / row["replay_ms"]
        row["capture"] = "ok"
    except Exception as error:
        row["capture"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return row


def format_row(row: dict) -> str:
    def cell(key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    return (
        f"| {row['model']} | {row['algorithm']} | {row['engine']} | {cell('eager_ms', '.2f')}"
        f" | {cell('replay_ms', '.2f')} | {cell('speedup', '.2f')} |"
        f" {cell('replay_vs_eager', '.1e')} | {row['capture']} |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--algorithms", default="maml,metaticket")
    parser.add_argument("--engines", default="exact,fast")
    parser.add_argument("--precision", choices=("fp32", "tf32"), default="fp32")
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny models (CI)")
    return parser.parse_args(argv)


def configs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(model, algorithm, engine) in the order they run."""
    return [
        (model, algorithm, spec)
        for model in args.models.split(",")
        for algorithm in args.algorithms.split(",")
        for spec in args.engines.split(",")
    ]


HEADER = (
    "| model | algorithm | engine | eager ms | replay ms | speed-up | replay vs eager | capture |"
)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_precision(args.precision)
    print(HEADER.replace("| capture |", f"| capture ({args.precision}) |"))
    print("|---|---|---|---|---|---|---|---|")
    for model, algorithm, spec in configs(args):
        print(format_row(probe(model, algorithm, spec, args)), flush=True)


if __name__ == "__main__":
    main()
