"""fp32 meta-gradient error against float64, per engine lever, over many seeds (CPU).

    OMP_NUM_THREADS=1 python benchmarks/fp32_error.py                       # ResNet-12 8-8-16-16
    python benchmarks/fp32_error.py --channels 64,160,320,640 --seeds 3     # full width, slow
    python benchmarks/fp32_error.py --sensitivity                           # float64 vs noise

One seed = one model, masker and set of episodes (5-way 5-shot 15-query, 32x32, meta-batch 4,
one second-order step at lr 0.5). For each seed the fp32 meta-gradient of the per-task loop and
of the engine with each lever alone and all together is compared with the float64 loop: the
relative error of the whole meta-gradient and of the worst tensor. A single seed says little:
the second-order meta-gradient of a network with batch-statistics BatchNorm is ill-conditioned
(``--sensitivity``: the float64 meta-gradient itself moves by up to 1e-2 when the images are
perturbed by fp32's rounding, 6e-8), so any change of rounding redraws the error from a
heavy-tailed distribution. Compare medians and the geometric mean of the per-seed ratios.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from fewmask import Engine, Episode, create
from fewmask.testing import (
    ENGINE_PATHS,
    engine_gradient,
    random_episodes,
    reference_engine_gradient,
)

WAYS, SHOTS, QUERIES, LR = 5, 5, 15, 0.5
LEVERS = ENGINE_PATHS  # the exact engine, each lever alone and all together


def setup(seed: int, channels, side: int, algorithm: str, meta_batch: int):
    """A ResNet-12 engine (fp32, CPU) and ``meta_batch`` random episodes, from ``seed``."""
    torch.manual_seed(seed)
    shape = (3, side, side)
    options = {"channels": list(channels)}
    backbone = create("backbone", "resnet12", options, input_shape=shape, num_classes=WAYS)
    masker = create("masker", "metaticket" if algorithm == "metaticket" else "dense")
    masker.attach(backbone)
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": 1})
    engine = Engine(backbone, masker, inner, create("objective", algorithm))
    g = torch.Generator().manual_seed(1000 + seed)
    return engine, random_episodes(meta_batch, WAYS, SHOTS, QUERIES, shape, g, uniform=True)


def loop_gradient(engine: Engine, episodes) -> list[torch.Tensor]:
    return reference_engine_gradient(engine, episodes, LR, 1)


def lever_gradient(engine: Engine, episodes, options) -> list[torch.Tensor]:
    """The meta-gradient of ``engine``'s components through an engine with ``options``."""
    step = Engine(engine.backbone, engine.masker, engine.inner, engine.objective, options)
    return engine_gradient(step, episodes)


def double(episodes) -> list[Episode]:
    return [
        Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y) for e in episodes
    ]


def errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[float, float]:
    """Relative error of the whole gradient and of its worst tensor."""
    whole = torch.cat([g.double().flatten() for g in got]) - torch.cat([w.flatten() for w in want])
    norm = torch.cat([w.flatten() for w in want]).norm()
    worst = max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(got, want))
    return (whole.norm() / norm).item(), worst


def seed_errors(
    seed: int, channels=(8, 8, 16, 16), side=32, algorithm="metaticket", meta_batch=4, levers=LEVERS
) -> dict[str, tuple[float, float]]:
    """``{path: (whole error, worst-tensor error)}`` of the loop and each lever, for one seed."""
    engine, episodes = setup(seed, channels, side, algorithm, meta_batch)
    got = {"loop": loop_gradient(engine, episodes)}
    got |= {name: lever_gradient(engine, episodes, options) for name, options in levers.items()}
    engine.backbone.double()
    engine.masker.double()
    want = loop_gradient(engine, double(episodes))
    return {name: errors(grads, want) for name, grads in got.items()}


def sensitivity(seed: int, channels=(8, 8, 16, 16), side=32, algorithm="metaticket") -> float:
    """How far the float64 meta-gradient moves when the images get relative noise of 6e-8."""
    engine, episodes = setup(seed, channels, side, algorithm, 4)
    engine.backbone.double()
    engine.masker.double()
    episodes = double(episodes)
    g = torch.Generator().manual_seed(seed)

    def noisy(x):
        return x * (1 + 6e-8 * torch.randn(x.shape, generator=g, dtype=x.dtype))

    perturbed = [
        Episode(noisy(e.support_x), e.support_y, noisy(e.query_x), e.query_y) for e in episodes
    ]
    return errors(loop_gradient(engine, perturbed), loop_gradient(engine, episodes))[0]


def summary(rows: list[dict[str, tuple[float, float]]], index: int = 1) -> dict[str, dict]:
    """Per path: median error and the geometric mean of its per-seed ratio to the exact engine."""
    out = {}
    for name in rows[0]:
        values = [r[name][index] for r in rows]
        ratios = [math.log(r[name][index] / r["exact"][index]) for r in rows]
        out[name] = {
            "median": statistics.median(values),
            "max": max(values),
            "ratio_geomean": math.exp(sum(ratios) / len(ratios)),
            "worse_3x": sum(x > math.log(3) for x in ratios),
            "better_3x": sum(x < -math.log(3) for x in ratios),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="8,8,16,16", help="ResNet-12 widths")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--algorithm", choices=["maml", "metaticket"], default="metaticket")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sensitivity", action="store_true", help="float64 under input noise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    channels = [int(c) for c in args.channels.split(",")]
    if args.sensitivity:
        for seed in range(args.seeds):
            change = sensitivity(seed, channels, args.side, args.algorithm)
            print(f"seed {seed}: float64 meta-gradient moves by {change:.1e}", flush=True)
        return
    rows = []
    for seed in range(args.seeds):
        rows.append(seed_errors(seed, channels, args.side, args.algorithm))
        cells = " ".join(f"{k} {w:.1e}" for k, (_, w) in rows[-1].items())
        print(f"seed {seed} worst tensor: {cells}", flush=True)
    print(
        "| path | median worst-tensor error | max | vs exact (geometric mean) | >3x worse "
        "| >3x better |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in summary(rows).items():
        print(
            f"| {name} | {s['median']:.1e} | {s['max']:.1e} | {s['ratio_geomean']:.2f}x | "
            f"{s['worse_3x']} | {s['better_3x']} |"
        )


if __name__ == "__main__":
    main()
