"""Time one meta-training iteration: fewmask's engine against a plain per-task reference loop.

    OMP_NUM_THREADS=1 python benchmarks/meta_step.py --device cpu            # mlp5 and conv4
    python benchmarks/meta_step.py --device cuda                             # all three models
    python benchmarks/meta_step.py --tiny                                    # seconds (CI)

One iteration: 5-way 5-shot 15-query, meta-batch 4, one second-order inner SGD step (lr 0.5),
random inputs (fixed seed). MAML = ``dense`` masker, meta-parameters all backbone parameters;
Meta-ticket = ``metaticket`` masker, meta-parameters its scores.

The reference loop is :func:`fewmask.testing.reference_meta_gradient`, the one the float64
engine tests check against, independent of ``fewmask.engine``: per task, masks from the masker,
a functional copy of the parameters through ``torch.func.functional_call`` with weights
``W * m``, ``autograd.grad(create_graph=True)``, ``fast = p - lr * g``, query loss / B,
``autograd.grad`` into the meta-parameters, accumulated (what learn2learn and the authors' code
do). The engine is :meth:`fewmask.Engine.meta_step`. Engine and loop run alternately in one
process on identical parameters and episodes; warm-up runs are excluded; times are medians.

Columns: peak memory is the growth over the iteration (CUDA: ``max_memory_allocated`` after
``reset_peak_memory_stats``; CPU: free heap returned with ``malloc_trim``, the peak RSS reset by
writing 5 to ``/proc/self/clear_refs``, then ``VmHWM`` minus the RSS before the iteration, in a
separate untimed run). FLOPs are counted once on the loop with ``FlopCounterMode``. ``grad diff``
is ``||g_engine - g_loop|| / ||g_loop||`` over the concatenated meta-gradients.

``--malloc both`` (default on CPU) runs everything twice, each in a fresh process: with glibc's
default ``malloc`` and with :func:`fewmask.runtime.allocator.tune_glibc_malloc`; the loop is timed
under
the same setting as the engine, so each row's ratio is the engine's own gain. On CPU resnet12 is
left out unless named in ``--models`` (minutes per iteration on one core).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import fewmask
from fewmask import Engine, EngineOptions, Episode
from fewmask.runtime.allocator import is_glibc, trim, tune_glibc_malloc
from fewmask.testing import engine_gradient, random_episodes, reference_engine_gradient

WAYS, SHOTS, QUERIES, LR = 5, 5, 15, 0.5
MODELS = {  # name: (options, input shape, tiny options, tiny input shape)
    "mlp5": ({}, (3, 32, 32), {"hidden": [32, 16, 16, 8]}, (3, 8, 8)),
    "conv4": ({}, (3, 84, 84), {"channels": 8}, (3, 32, 32)),
    "resnet12": ({}, (3, 84, 84), {"channels": [8, 8, 16, 16]}, (3, 32, 32)),
    "wrn28_10": ({}, (3, 84, 84), {"depth": 10, "widen_factor": 1}, (3, 32, 32)),
}
DEFAULT_MODELS = ("mlp5", "conv4", "resnet12")  # wrn28_10 (memory check) only when named
MASKERS = {"maml": "dense", "metaticket": "metaticket"}
COLUMNS = [
    "model",
    "algorithm",
    "malloc",
    "loop s",
    "engine s",
    "loop/engine",
    "loop peak MiB",
    "engine peak MiB",
    "GFLOP/iter",
    "loop {unit}",
    "engine {unit}",
    "grad diff",
]


def build(model: str, algorithm: str, args: argparse.Namespace):
    """Backbone, masker, inner optimizer, objective and episodes, from a fixed seed."""
    options, shape, tiny_options, tiny_shape = MODELS[model]
    options, shape = (tiny_options, tiny_shape) if args.tiny else (options, shape)
    torch.manual_seed(0)
    backbone = fewmask.create("backbone", model, options, input_shape=shape, num_classes=WAYS)
    masker = fewmask.create("masker", MASKERS[algorithm])
    masker.attach(backbone)
    inner = fewmask.create("inner_optimizer", "sgd", {"lr": LR, "steps": 1})
    objective = fewmask.create("objective", algorithm)  # maml: every weight; metaticket: scores
    backbone.to(args.device)
    masker.to(args.device)
    g = torch.Generator().manual_seed(1)
    episodes = random_episodes(args.meta_batch, WAYS, SHOTS, QUERIES, shape, g, uniform=True)
    return backbone, masker, inner, objective, [e.to(args.device) for e in episodes]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def flat_grad(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten() for g in grads])


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_mib(fn, device: str) -> float:
    """Memory the call adds at its peak (see the module docstring); nan if unmeasurable."""
    gc.collect()
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:
        trim()
        before = status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        fn()
        return (status_kib("VmHWM") - before) / 1024
    except OSError:
        return float("nan")


def precision_context(args: argparse.Namespace):
    if args.precision == "bf16":
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_precision(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def engine_options(spec: str) -> EngineOptions:
    if spec == "fast":
        return EngineOptions.fast()
    levers = [s for s in spec.split(",") if s and s != "exact"]
    return EngineOptions(**dict.fromkeys(levers, True))


def measure(model: str, algorithm: str, args: argparse.Namespace) -> dict:
    backbone, masker, inner, objective, episodes = build(model, algorithm, args)
    engine = Engine(backbone, masker, inner, objective, engine_options(args.engine))

    def run_loop() -> list[torch.Tensor]:
        with precision_context(args):
            return reference_engine_gradient(engine, episodes, LR, 1)

    def run_engine() -> list[torch.Tensor]:
        with precision_context(args):
            return engine_gradient(engine, episodes)

    row = {"model": model, "algorithm": algorithm, "malloc": args.malloc}
    set_precision("fp32")
    with FlopCounterMode(display=False) as counter:  # also the loop's first warm-up
        fp32_grad = flat_grad(reference_engine_gradient(engine, episodes, LR, 1))
    row["gflop"] = counter.get_total_flops() / 1e9
    set_precision(args.precision)

    times: dict[str, list[float]] = {"loop": [], "engine": []}
    grads = {}
    runs = [("engine", run_engine), ("loop", run_loop)]
    for i in range(args.warmup + args.repeats):
        for name, fn in runs if i % 2 == 0 else runs[::-1]:  # alternate which goes first
            sync(args.device)
            start = time.perf_counter()
            result = fn()
            sync(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
            grads[name] = flat_grad(result)
            del result
    for name, fn in (("loop", run_loop), ("engine", run_engine)):
        row[f"{name}_peak_mib"] = peak_mib(fn, args.device)
        row[f"{name}_times"] = times[name]
        row[f"{name}_s"] = statistics.median(times[name])
    row["speedup"] = row["loop_s"] / row["engine_s"]
    row["grad_diff"] = relative(grads["engine"], grads["loop"])
    if args.precision != "fp32":
        for name in ("engine", "loop"):
            row[f"{name}_vs_fp32"] = relative(grads[name], fp32_grad)
    if args.fp64_reference:
        backbone.double()
        masker.double()
        episodes = [
            Episode(e.support_x.double(), e.support_y, e.query_x.double(), e.query_y)
            for e in episodes
        ]
        fp64_grad = flat_grad(reference_engine_gradient(engine, episodes, LR, 1))
        for name in ("engine", "loop"):
            row[f"{name}_vs_fp64"] = relative(grads[name], fp64_grad)
    return row


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def format_table(rows: list[dict], device: str) -> str:
    unit, scale = ("TFLOP/s", 1e-3) if device.startswith("cuda") else ("GFLOP/s", 1.0)
    columns = [c.format(unit=unit) for c in COLUMNS]
    extra = [k for k in ("vs_fp32", "vs_fp64") if rows and f"engine_{k}" in rows[0]]
    columns += [f"{side} vs {k[3:]} loop" for k in extra for side in ("engine", "loop")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [
            r["model"],
            r["algorithm"],
            r["malloc"],
            f"{r['loop_s']:.4g}",
            f"{r['engine_s']:.4g}",
            f"{r['speedup']:.2f}x",
            f"{r['loop_peak_mib']:.0f}",
            f"{r['engine_peak_mib']:.0f}",
            f"{r['gflop']:.4g}",
            f"{r['gflop'] / r['loop_s'] * scale:.3g}",
            f"{r['gflop'] / r['engine_s'] * scale:.3g}",
            f"{r['grad_diff']:.1e}",
        ]
        cells += [f"{r[f'{side}_{k}']:.1e}" for k in extra for side in ("engine", "loop")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--models",
        help="comma-separated from mlp5, conv4, resnet12, wrn28_10 "
        "(default: the first three; mlp5,conv4 on CPU)",
    )
    parser.add_argument("--algorithms", default="maml,metaticket")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before (each side)")
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    parser.add_argument(
        "--engine",
        default="fast",
        help="engine options: 'fast' (all), 'exact' (none) or a comma list of "
        "fused_sgd, fused_batchnorm, channels_last",
    )
    parser.add_argument(
        "--malloc",
        choices=["default", "tuned", "both"],
        help="glibc malloc setting (default: both on CPU, default on CUDA)",
    )
    parser.add_argument(
        "--fp64-reference",
        action="store_true",
        help="also print both gradients' error against a float64 loop (slow on CPU)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny models and images, 1 repeat")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cpu = not args.device.startswith("cuda")
    args.malloc = args.malloc or ("both" if cpu else "default")
    if args.tiny:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = not args.device.startswith("cuda")
    models = args.models or ("mlp5,conv4" if cpu else ",".join(DEFAULT_MODELS))
    if args.malloc == "both":
        rows = []
        for mode in ("default", "tuned") if is_glibc() else ("default",):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "rows.json"
                child = list(argv if argv is not None else sys.argv[1:])
                child += ["--malloc", mode, "--models", models, "--json", str(out), "--child"]
                subprocess.run([sys.executable, __file__, *child], check=True)
                rows += json.loads(out.read_text())["rows"]
        order = {(m, a): i for i, (m, a) in enumerate(_pairs(models, args.algorithms))}
        rows.sort(key=lambda r: order[(r["model"], r["algorithm"])])
    else:
        if args.malloc == "tuned" and not tune_glibc_malloc():
            raise SystemExit("--malloc tuned needs glibc")
        rows = [measure(m, a, args) for m, a in _pairs(models, args.algorithms)]
        if args.child:  # one half of --malloc both: the parent prints
            args.json.write_text(json.dumps({"rows": rows}))
            return
    header = (
        f"torch {torch.__version__}, {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if not cpu else f", {args.threads} thread(s)")
        + f", {args.precision}, meta-batch {args.meta_batch}, engine={args.engine}, "
        f"median of {args.repeats} after {args.warmup} warm-up"
        + (", tiny models" if args.tiny else "")
    )
    print(header)
    if cpu and not args.models:
        print("resnet12 left out on CPU (minutes per iteration); name it in --models to run it")
    print(format_table(rows, args.device))
    for r in rows:  # the allocator's share, made visible: engine with it vs loop without
        if r["malloc"] == "tuned":
            base = next(b for b in rows if b["malloc"] == "default" and _pair(b) == _pair(r))
            print(
                f"{r['model']} {r['algorithm']}: engine (tuned malloc) vs loop (default malloc): "
                f"{base['loop_s'] / r['engine_s']:.2f}x (loop alone gains "
                f"{base['loop_s'] / r['loop_s']:.2f}x from the allocator)"
            )
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))


def _pair(row: dict) -> tuple[str, str]:
    return row["model"], row["algorithm"]


def _pairs(models: str, algorithms: str) -> list[tuple[str, str]]:
    return [(m, a) for m in models.split(",") if m for a in algorithms.split(",") if a]


if __name__ == "__main__":
    main()
