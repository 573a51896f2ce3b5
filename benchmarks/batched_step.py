"""CPU seconds per meta-iteration: the exact engine against the batched one, and learn2learn.

    OMP_NUM_THREADS=1 python benchmarks/batched_step.py                 # both tables
    OMP_NUM_THREADS=1 python benchmarks/batched_step.py --tiny          # seconds (CI smoke)
    python benchmarks/batched_step.py --tune-malloc                     # glibc heap kept

Two tables, each measured in one process, variants alternating round-robin, warm-up
iterations excluded, one thread, CPU time of the process (``time.process_time``: the machine
may be shared, and wall time then says more about the neighbours than about fewmask), medians:

1. **The README job** (``examples/metaticket_glyphs.yaml``): the glyph MLP 784-256-128-64-64,
   5-way 1-shot 1 query per class, meta-batch 4, one second-order inner step at lr 0.4.
   Meta-ticket and MAML, exact and batched engine; learn2learn 0.2.0's ``MAML`` (``clone()`` /
   ``adapt()`` per task, the same backbone and episodes) as the peer, when it is importable.
2. **Meta-ticket / MAML** on the 5-MLP (3072-1024-512-256-128, 32x32x3; 5-shot and 1-shot)
   and on Conv4 (64 channels, ``--conv-side`` pixels; 5-shot): 5-way, 15 queries per class,
   meta-batch 4, one step at 0.5.

Every number is a ratio to a reference timed in the same run. Before timing, each variant's
meta-gradient is compared with the exact engine's (``grad diff``, relative, fp32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fewmask
import fewmask.engine.low_rank
from fewmask import Engine, EngineOptions
from fewmask.testing import random_episodes

ENGINES = {
    "exact": None,
    "batched, dense updates": EngineOptions.batched_path(),
    "batched": EngineOptions.batched_path(),
}
"""``batched`` keeps a linear layer's per-task updates low-rank where the cost model says so
(:mod:`fewmask.engine.low_rank`); ``batched, dense updates`` forms every per-task weight (the
batched engine before the low-rank layers), for the ratio between the two."""
DENSE_ONLY = {"batched, dense updates"}


def build(model, options, shape, algorithm, ways, shots, queries, lr, meta_batch):
    torch.manual_seed(0)
    backbone = fewmask.create("backbone", model, options, input_shape=shape, num_classes=ways)
    masker = fewmask.create("masker", "metaticket" if algorithm == "metaticket" else "dense")
    masker.attach(backbone)
    inner = fewmask.create("inner_optimizer", "sgd", {"lr": lr, "steps": 1})
    objective = fewmask.create("objective", algorithm)
    g = torch.Generator().manual_seed(1)
    episodes = random_episodes(meta_batch, ways, shots, queries, shape, g, uniform=True)
    return backbone, masker, inner, objective, episodes


def engine_step(parts, name):
    """A callable meta-step of engine ``name`` and the flat meta-gradient it gives."""
    backbone, masker, inner, objective, episodes = parts
    engine = Engine(backbone, masker, inner, objective, ENGINES[name])
    default_cost = fewmask.engine.low_rank.DENSE_COST
    cost = 0 if name in DENSE_ONLY else default_cost

    def step():
        fewmask.engine.low_rank.DENSE_COST = cost  # read at each step
        try:
            return engine.meta_step(episodes)
        finally:
            fewmask.engine.low_rank.DENSE_COST = default_cost

    grads = step().grads
    flat = torch.cat([grads[n].flatten() for n in engine.meta_params if n in grads])
    return step, flat


def learn2learn_step(parts, lr: float):
    """learn2learn 0.2.0's MAML over the same backbone and episodes (None if absent)."""
    try:
        import learn2learn as l2l
    except ImportError:
        return None, None
    backbone, _, _, _, episodes = parts
    maml = l2l.algorithms.MAML(backbone, lr=lr, first_order=False)
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        for p in maml.parameters():
            p.grad = None
        for e in episodes:
            learner = maml.clone()
            learner.adapt(loss_fn(learner(e.support_x), e.support_y))
            (loss_fn(learner(e.query_x), e.query_y) / len(episodes)).backward()

    step()
    flat = torch.cat([p.grad.flatten() for p in maml.parameters()])
    return step, flat


def cpu_seconds(steps: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median CPU seconds per call of each step, the steps alternating."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.process_time()
            step()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def readme_job(args) -> None:
    hidden = [8, 4] if args.tiny else [256, 128, 64, 64]
    print("\n## The README job: glyph MLP, 5-way 1-shot, meta-batch 4 (CPU s / iteration)")
    print("| algorithm | engine | s/iter | exact/this | grad diff |")
    print("|---|---|---|---|---|")
    steps, grads, labels = {}, {}, {}
    for algorithm in ("metaticket", "maml"):
        for name in ENGINES:
            parts = build(
                "omniglot_mlp", {"hidden": hidden}, (1, 28, 28), algorithm, 5, 1, 1, 0.4, 4
            )
            key = f"{algorithm} {name}"
            steps[key], grads[key] = engine_step(parts, name)
            labels[key] = (algorithm, name)
    parts = build("omniglot_mlp", {"hidden": hidden}, (1, 28, 28), "maml", 5, 1, 1, 0.4, 4)
    l2l_step, l2l_grad = learn2learn_step(parts, 0.4)
    if l2l_step is not None:
        steps["maml learn2learn"], grads["maml learn2learn"] = l2l_step, l2l_grad
        labels["maml learn2learn"] = ("maml", "learn2learn 0.2.0")
    seconds = cpu_seconds(steps, args.repeats)
    for key, (algorithm, name) in labels.items():
        exact = f"{algorithm} exact"
        print(
            f"| {algorithm} | {name} | {seconds[key]:.4f} | "
            f"{seconds[exact] / seconds[key]:.2f}x | {diff(grads[key], grads[exact]):.1e} |"
        )
    if l2l_step is None:
        print("learn2learn: absent (not importable here); no peer row")
    else:
        for key in ("maml exact", "maml batched", "metaticket batched"):
            ratio = seconds["maml learn2learn"] / seconds[key]
            print(f"learn2learn MAML / fewmask {key}: {ratio:.2f}x")


def cost_ratios(args) -> None:
    side = 16 if args.tiny else args.conv_side
    mlp5 = ({"hidden": [32, 16, 16, 8]} if args.tiny else {}, (3, 32, 32))
    cases = {  # label: model, (options, shape), (ways, shots, queries, lr)
        "5-MLP 32x32, 5-shot 15 queries": ("mlp5", mlp5, (5, 5, 15, 0.5)),
        "5-MLP 32x32, 1-shot 15 queries": ("mlp5", mlp5, (5, 1, 15, 0.5)),
        f"Conv4 {side}x{side}, 5-shot 15 queries": (
            "conv4",
            ({"channels": 8} if args.tiny else {}, (3, side, side)),
            (5, 5, 15, 0.5),
        ),
    }
    print("\n## Meta-ticket / MAML, 5-way, meta-batch 4, one step (CPU s / iteration)")
    print("| model, episodes | engine | MAML s | Meta-ticket s | Meta-ticket/MAML | exact/this |")
    print("|---|---|---|---|---|---|")
    for label, (model, (options, shape), episode) in cases.items():
        steps = {}
        for algorithm in ("maml", "metaticket"):
            for name in ENGINES:
                parts = build(model, options, shape, algorithm, *episode, 4)
                steps[(algorithm, name)], _ = engine_step(parts, name)
        seconds = cpu_seconds(steps, args.repeats if model == "mlp5" else args.conv_repeats)
        for name in ENGINES:
            maml, ticket = seconds[("maml", name)], seconds[("metaticket", name)]
            speed = seconds[("maml", "exact")] / maml
            print(
                f"| {label} | {name} | {maml:.4f} | {ticket:.4f} | {ticket / maml:.2f} | "
                f"{speed:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--repeats", type=int, default=21, help="timed iterations (MLPs)")
    parser.add_argument("--conv-repeats", type=int, default=5, help="timed iterations (Conv4)")
    parser.add_argument("--conv-side", type=int, default=84, help="Conv4 image side")
    parser.add_argument("--tune-malloc", action="store_true", help="tune the allocator")
    parser.add_argument("--skip-ratios", action="store_true", help="only the README job")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.tune_malloc:
        from fewmask.runtime.allocator import tune_glibc_malloc

        tune_glibc_malloc()
    print(f"torch {torch.__version__}, 1 thread, malloc tuned: {args.tune_malloc}")
    readme_job(args)
    if not args.skip_ratios:
        cost_ratios(args)


if __name__ == "__main__":
    main()
