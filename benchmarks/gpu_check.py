"""The GPU check in one command: CUDA tests, meta-step speed/memory/precision, WRN-28-10 memory,
episodes from a dataset held on the device; one JSON and one markdown table.

    python benchmarks/gpu_check.py OUT                  # a CUDA machine: at most ~9 minutes
    python benchmarks/gpu_check.py OUT --cpu-dry-run    # the same code paths, tiny, on the CPU

Parts, each in its own process with its own time budget (a part that fails or runs out of time
is recorded, and the others still run; rows finished before a timeout are kept):

- ``environment``: Python, torch, the GPU, the packages fewmask needs, the registered plugins;
- ``tests``: ``pytest -m gpu`` over the CUDA tests (``tests/test_cuda.py``: engine paths
  against the per-task loop in float64, activation checkpointing, checkpoints and resume, no
  host synchronisation in the meta-step, the device-held dataset; the timm plugin's GPU tests);
- ``episodes``: ``benchmarks/episodes.py`` with the dataset held on the device;
- ``wrn``: WRN-28-10 at 84x84, meta-batch 4, second order: peak memory with and without
  ``checkpoint_blocks`` (``benchmarks/wrn_memory.py``), MAML and Meta-ticket;
- ``meta_step``: ``benchmarks/meta_step.py``'s measurement for the 5-MLP, Conv4 and ResNet-12,
  MAML and Meta-ticket, exact and fast engines, fp32 (with a float64 reference), TF32 and bf16.
- ``graph``: ``benchmarks/cuda_graph_probe.py``: the same iterations in fp32, eager against the
  replay of one captured CUDA graph (``train.cuda_graph``), and whether the replay's gradients
  equal the eager ones.

It runs from the working tree as it is: fewmask and the plugins go on ``PYTHONPATH`` beside a
small folder of package metadata that declares their entry points, so nothing is pip-installed.
Writes ``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.log`` into OUT and prints the table.
docs/performance.md gives the command for the device tool.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PARTS = {
    "environment": 30,
    "tests": 110,
    "episodes": 40,
    "wrn": 70,
    "meta_step": 220,
    "graph": 70,
}
"""Each part's time budget in seconds on a GPU (their sum stays under 9 minutes)."""
TOTAL_BUDGET = 540
CUDA_TESTS = [
    "tests/test_cuda.py",
    "tests/test_cuda_graph.py",
    "tests/test_cuda_graph_probe.py",
    "plugins/fewmask-plugin-timm/tests/test_timm.py",
]
PLUGIN_LIBRARIES = {"timm": "timm"}
"""Plugins that need a library the machine may lack: without it they are switched off (and
their tests left out), so the other parts still run; the environment part lists them."""


def plugins_without_library() -> list[str]:
    return [p for p, lib in PLUGIN_LIBRARIES.items() if importlib.util.find_spec(lib) is None]


NEEDED = ["torch", "numpy", "PIL", "pluggy", "attrs", "cattrs", "yaml", "pytest", "hypothesis"]
OPTIONAL = ["timm", "torchvision", "tensorboard"]
SPEED_TARGETS = {"mlp5": 8.0, "conv4": 2.0, "resnet12": 3.0}
"""Engine over per-task loop, per model (spec/performance.md, issue 5)."""
MEMORY_TARGET = 1.5  # engine peak at most 1.5x the loop's
EPISODE_TARGET = 20_000  # episodes/s


# ------------------------------------------------------------------------- running from a tree
def _pyproject(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())["project"]


def metadata_folder(target: Path) -> list[Path]:
    """Write ``*.dist-info`` folders for fewmask and every plugin in the tree into ``target``
    (name, version, entry points: what ``importlib.metadata`` reads to find the plugins); return
    the source folders to put on ``sys.path`` after ``target``."""
    sources = [ROOT, *sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))]
    for source in sources:
        project = _pyproject(source / "pyproject.toml")
        name, version = project["name"], project["version"]
        info = target / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        groups = project.get("entry-points", {})
        lines = [
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
            for group, entries in groups.items()
        ]
        (info / "entry_points.txt").write_text("\n".join(lines))
    return sources


def child_environment(metadata: Path) -> dict[str, str]:
    """The environment of every part: the tree's packages first on PYTHONPATH (not strict
    about plugins: one that fails to load is reported by the environment part)."""
    paths = [str(metadata), *map(str, metadata_folder(metadata))]
    old = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}
    env.setdefault("PYTHONUNBUFFERED", "1")
    off = plugins_without_library()
    if off:
        listed = [env.get("FEWMASK_DISABLE_PLUGINS", ""), *off]
        env["FEWMASK_DISABLE_PLUGINS"] = ",".join(p for p in listed if p)
    return env


# ---------------------------------------------------------------------------------- the parts
def emit(results: Path, kind: str, value) -> None:
    """Append one record (``row`` or ``summary``) to a part's results file, at once."""
    with results.open("a") as f:
        f.write(json.dumps({kind: value}, default=str) + "\n")


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_for(dry: bool) -> str:
    import torch

    if dry:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-dry-run, or on a GPU machine")
    return "cuda"


def part_environment(results: Path, dry: bool) -> None:
    import importlib.metadata as md

    import torch

    versions, missing = {}, []
    for module in NEEDED + OPTIONAL:
        if importlib.util.find_spec(module) is None:
            missing += [module] if module in NEEDED else []
            versions[module] = None
            continue
        dist = {"PIL": "pillow", "yaml": "PyYAML"}.get(module, module)
        with contextlib.suppress(md.PackageNotFoundError):
            versions[module] = md.version(dist)
    summary = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "packages": versions,
        "missing": missing,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        summary |= {
            "gpu": props.name,
            "gpu_memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    emit(results, "summary", summary)  # before fewmask: a missing package must not hide this
    import fewmask

    summary["fewmask"] = fewmask.__version__
    summary["failed_plugins"] = [str(f) for f in fewmask.default_registry().failures]
    summary["plugins_switched_off"] = plugins_without_library()  # their library is missing
    summary["components"] = {
        kind: sorted(fewmask.list_components(kind))
        for kind in ("backbone", "masker", "inner_optimizer", "objective")
    }
    emit(results, "summary", summary)
    if missing:
        raise SystemExit(f"missing packages: {', '.join(missing)}")


def part_tests(results: Path, dry: bool) -> None:
    """``pytest -m gpu`` over :data:`CUDA_TESTS`; the outcome of every test."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
        off = plugins_without_library()
        tests = [t for t in CUDA_TESTS if not any(f"fewmask-plugin-{p}/" in t for p in off)]
        command += ["-rfEs", f"--junitxml={junit}", *tests]
        code = subprocess.run(command, cwd=ROOT).returncode
        outcomes = junit_outcomes(junit) if junit.exists() else {}
    for name, (outcome, message) in outcomes.items():
        emit(results, "row", {"test": name, "outcome": outcome, "message": message})
    counts = {k: sum(o == k for o, _ in outcomes.values()) for k in OUTCOMES}
    emit(results, "summary", {"exit_code": code, **counts})
    if code not in (0, 5) or not outcomes:
        raise SystemExit(f"pytest exited with {code}")


OUTCOMES = ("passed", "failed", "error", "skipped")


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "")[:300]
        outcomes[name] = (outcome, message)
    return outcomes


def part_episodes(results: Path, dry: bool) -> None:
    episodes = load_benchmark("episodes")
    device = device_for(dry)
    for row in episodes.measure(device, seconds=0.05 if dry else 2.0, tiny=dry):
        emit(results, "row", row)


def part_wrn(results: Path, dry: bool) -> None:
    wrn = load_benchmark("wrn_memory")
    device = device_for(dry)
    tiny = {"side": 16, "meta_batch": 2, "options": {"depth": 10, "widen_factor": 1}}
    cases = [("dense", False), ("dense", True), ("metaticket", False), ("metaticket", True)]
    for masker, checkpoint in cases:
        try:
            row = wrn.peak_memory(masker, checkpoint, False, device=device, **(tiny if dry else {}))
        except Exception as exc:  # e.g. out of memory: the other cases still run
            row = {"masker": masker, "checkpoint_blocks": checkpoint, "error": repr(exc)[:300]}
        emit(results, "row", row)
        free_device_memory()


DRY_META_STEP = [
    ("fp32", "mlp5", "exact", "maml"),
    ("fp32", "conv4", "fast", "metaticket"),
    ("tf32", "resnet12", "fast", "maml"),
    ("bf16", "mlp5", "exact", "metaticket"),
]
"""The dry run's rows: every precision, model, engine and algorithm at least once."""


def meta_step_configs(dry: bool) -> list[tuple[str, str, str, str]]:
    """(precision, model, engine, algorithm), fp32 first: the most important rows finish
    first if time runs out."""
    if dry:
        return DRY_META_STEP
    return [
        (precision, model, engine, algorithm)
        for precision in ("fp32", "tf32", "bf16")
        for model in ("mlp5", "conv4", "resnet12")
        for engine in ("exact", "fast")
        for algorithm in ("maml", "metaticket")
    ]


def part_meta_step(results: Path, dry: bool) -> None:
    meta_step = load_benchmark("meta_step")
    device = device_for(dry)
    for precision, model, engine, algorithm in meta_step_configs(dry):
        argv = ["--device", device, "--models", model, "--algorithms", algorithm]
        argv += ["--precision", precision, "--engine", engine, "--malloc", "default"]
        argv += ["--tiny", "--warmup", "0"] if dry else ["--repeats", "3", "--warmup", "1"]
        argv += ["--fp64-reference"] if precision == "fp32" else []
        row = {"model": model, "algorithm": algorithm, "precision": precision, "engine": engine}
        try:
            row |= meta_step.measure(model, algorithm, meta_step.parse_args(argv))
        except Exception as exc:  # e.g. out of memory: the other rows still run
            row["error"] = repr(exc)[:300]
        row |= {"precision": precision, "engine": engine}
        emit(results, "row", row)
        free_device_memory()


def part_graph(results: Path, dry: bool) -> None:
    graph = load_benchmark("cuda_graph_probe")
    argv = ["--device", device_for(dry)]
    argv += ["--tiny", "--models", "mlp5", "--warmup", "0", "--repeats", "1"] if dry else []
    args = graph.parse_args(argv)
    graph.set_precision(args.precision)
    for model, algorithm, engine in graph.configs(args):
        try:
            row = graph.probe(model, algorithm, engine, args)
        except Exception as exc:  # e.g. out of memory: the other rows still run
            row = {"model": model, "algorithm": algorithm, "engine": engine}
            row["error"] = repr(exc)[:300]
        emit(results, "row", row)
        free_device_memory()


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


PART_FUNCTIONS = {
    "environment": part_environment,
    "tests": part_tests,
    "episodes": part_episodes,
    "wrn": part_wrn,
    "meta_step": part_meta_step,
    "graph": part_graph,
}


# ------------------------------------------------------------------------------ orchestration
def run_part(name: str, budget: float, out: Path, env: dict, dry: bool, log) -> dict:
    """Run one part in its own process group, killed at ``budget`` seconds; its records."""
    results = out / f".{name}.jsonl"
    results.unlink(missing_ok=True)
    command = [sys.executable, __file__, str(out), "--part", name]
    command += ["--cpu-dry-run"] if dry else []
    log.write(f"\n===== {name} (budget {budget:.0f} s) =====\n")
    log.flush()
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        code = process.wait(timeout=max(budget, 1))
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = "timeout"
    seconds = time.perf_counter() - start
    rows, summary = [], {}
    if results.exists():
        for line in results.read_text().splitlines():
            record = json.loads(line)
            if "row" in record:
                rows.append(record["row"])
            else:
                summary = record["summary"]
        results.unlink()
    log.write(f"===== {name}: {status} in {seconds:.0f} s =====\n")
    log.flush()
    return {"status": status, "seconds": seconds, "budget_s": budget, "rows": rows, **summary}


def check(out: Path, parts: list[str], dry: bool, total: float, budgets: dict[str, float]) -> dict:
    """Run ``parts`` in order within ``total`` seconds; write the JSON, markdown and log."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = time.perf_counter() + total
    report = {
        "format": "fewmask.gpu_check",
        "version": 1,
        "dry_run": dry,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "targets": {
            "speed_over_loop": SPEED_TARGETS,
            "memory_over_loop": MEMORY_TARGET,
            "wrn_gib": 80.0,
            "episodes_per_s": EPISODE_TARGET,
        },
        "parts": {},
    }
    with tempfile.TemporaryDirectory() as tmp, (out / "gpu_check.log").open("w") as log:
        env = child_environment(Path(tmp) / "site")
        for name in parts:
            left = deadline - time.perf_counter()
            if left < 5:
                report["parts"][name] = {"status": "skipped (no time left)", "rows": []}
                continue
            report["parts"][name] = run_part(name, min(budgets[name], left), out, env, dry, log)
    report["wall_s"] = time.time() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print(table)
    return report


# ------------------------------------------------------------------------------------ report
def _f(value, spec: str = ".3g", missing: str = "-") -> str:
    return missing if value is None or value != value else format(value, spec)


def markdown(report: dict) -> str:
    parts, env = report["parts"], report["parts"].get("environment", {})
    where = env.get("gpu") or ("CPU dry run" if report["dry_run"] else "no GPU")
    lines = [
        f"# GPU check: {where}",
        "",
        f"{report['started']}; torch {env.get('torch', '?')} (CUDA {env.get('cuda')}), "
        f"Python {env.get('python', '?')}; {report['wall_s']:.0f} s"
        + (
            "; **dry run on the CPU at tiny size: no figure here is a GPU figure**"
            if report["dry_run"]
            else ""
        ),
        "",
        "| part | status | seconds | budget |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {p['status']} | {_f(p.get('seconds'), '.0f')} | "
        f"{_f(p.get('budget_s'), '.0f')} |"
        for name, p in parts.items()
    ]
    if env.get("missing"):
        lines += ["", f"Missing packages: {', '.join(env['missing'])}"]
    lines += [f"- {failure}" for failure in env.get("failed_plugins", [])]
    for name, render in (
        ("tests", _tests_table),
        ("meta_step", _meta_step_table),
        ("graph", _graph_table),
        ("wrn", _wrn_table),
        ("episodes", _episodes_table),
    ):
        if parts.get(name, {}).get("rows"):
            lines += ["", *render(parts[name], report["targets"])]
    return "\n".join(lines) + "\n"


def _tests_table(part: dict, targets: dict) -> list[str]:
    counts = ", ".join(f"{part.get(k, 0)} {k}" for k in OUTCOMES)
    lines = ["## CUDA tests", "", counts]
    bad = [r for r in part["rows"] if r["outcome"] in ("failed", "error")]
    lines += [f"- {r['outcome']}: `{r['test']}`: {r['message']}" for r in bad]
    return lines


def _meta_step_table(part: dict, targets: dict) -> list[str]:
    lines = [
        "## One meta-iteration: engine vs the per-task loop",
        "",
        "5-way 5-shot 15-query, meta-batch 4, one second-order step; median of 3. Error: "
        "relative to a float64 loop (fp32 rows) or to the fp32 loop (TF32, bf16 rows).",
        "",
        "| model | algorithm | precision | engine | loop ms | engine ms | speed-up (target) "
        "| loop MiB | engine MiB | memory ratio (<= 1.5) | engine vs loop | engine error "
        "| loop error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        head = f"| {r['model']} | {r['algorithm']} | {r['precision']} | {r['engine']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} |" + " |" * 8)
            continue
        target = targets["speed_over_loop"].get(r["model"])
        met = "met" if target and r["speedup"] >= target else "missed"
        ratio = r["engine_peak_mib"] / r["loop_peak_mib"] if r["loop_peak_mib"] else None
        ref = "fp64" if "engine_vs_fp64" in r else "fp32"
        lines.append(
            f"{head} {r['loop_s'] * 1e3:.4g} | {r['engine_s'] * 1e3:.4g} | "
            f"{r['speedup']:.2f}x ({target}x, {met}) | {_f(r['loop_peak_mib'], '.0f')} | "
            f"{_f(r['engine_peak_mib'], '.0f')} | {_f(ratio, '.2f')} | {r['grad_diff']:.1e} | "
            f"{_f(r.get(f'engine_vs_{ref}'), '.1e')} | {_f(r.get(f'loop_vs_{ref}'), '.1e')} |"
        )
    return lines


def _graph_table(part: dict, targets: dict) -> list[str]:
    lines = [
        "## One meta-step captured into a CUDA graph (train.cuda_graph)",
        "",
        "The same iteration in fp32; eager engine against the replay of its captured graph "
        "(benchmarks/cuda_graph_probe.py); median of 5.",
        "",
        "| model | algorithm | engine | eager ms | replay ms | speed-up | replay vs eager "
        "| capture |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        if "error" in r:
            head = f"| {r['model']} | {r['algorithm']} | {r['engine']} |"
            lines.append(f"{head} {r['error']} |" + " |" * 4)
            continue
        lines.append(
            f"| {r['model']} | {r['algorithm']} | {r['engine']} | {r['eager_ms']:.2f} | "
            f"{_f(r.get('replay_ms'), '.2f')} | {_f(r.get('speedup'), '.2f')} | "
            f"{_f(r.get('replay_vs_eager'), '.1e')} | {r['capture']} |"
        )
    return lines


def _wrn_table(part: dict, targets: dict) -> list[str]:
    lines = [
        "## WRN-28-10, second order: peak memory of one meta-step",
        "",
        "| masker | checkpoint_blocks | image | meta-batch | peak GiB (target <= 80 GB) "
        "| model GiB | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        if "error" in r:
            lines.append(f"| {r['masker']} | {r['checkpoint_blocks']} | {r['error']} | | | | |")
            continue
        peak = r["peak_gib"]
        verdict = "" if peak is None else (" (met)" if peak * 2**30 <= 80e9 else " (missed)")
        lines.append(
            f"| {r['masker']} | {r['checkpoint_blocks']} | {r['side']}x{r['side']} | "
            f"{r['meta_batch']} | {_f(peak, '.1f')}{verdict} | {r['model_gib']:.2f} | "
            f"{r['seconds']:.1f} |"
        )
    return lines


def _episodes_table(part: dict, targets: dict) -> list[str]:
    lines = [
        "## Episodes from a dataset held on the device",
        "",
        "| images | device | episodes/s, uint8 | episodes/s, float | vs 20,000/s | gathered GB/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['images']} | {r['device']} | {r['uint8_per_s']:,.0f} | {r['float_per_s']:,.0f} | "
        f"{r['uint8_per_s'] / r['target_per_s']:.2f}x | {r['gb_per_s']:.1f} |"
        for r in part["rows"]
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json, .md and .log")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="the same code paths, tiny, on the CPU"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}"
    )
    parser.add_argument("--total", type=float, default=TOTAL_BUDGET, help="seconds in all")
    parser.add_argument(
        "--budgets",
        default="",
        help="override parts' budgets in seconds, e.g. meta_step=400,tests=60 (for a rerun)",
    )
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    if args.part:
        PART_FUNCTIONS[args.part](args.out / f".{args.part}.jsonl", args.cpu_dry_run)
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts: {', '.join(unknown)}")
    budgets = dict(PARTS)
    for item in filter(None, args.budgets.split(",")):
        name, _, seconds = item.partition("=")
        if name not in PARTS:
            parser.error(f"--budgets: unknown part {name!r}")
        budgets[name] = float(seconds)
    check(args.out, parts, args.cpu_dry_run, args.total, budgets)


if __name__ == "__main__":
    main()
