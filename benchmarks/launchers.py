"""Wall time of a small width sweep, `serial` against `--launcher local --workers N`.

    python benchmarks/launchers.py                          # 2 widths x 2 seeds, 1,000 iterations
    python benchmarks/launchers.py --widths 0.5 1 --seeds 1 2 3 --iterations 500 --workers 2

Both run the same `fewmask sweep` command (each in a fresh process, one thread per run) into
their own output folders, serial first, then local; the script prints each wall time, the ratio
serial / local, and whether every run's results.json and checkpoint are identical between the
two (they should be: fixed seeds on one thread are deterministic). Nothing here is a pass/fail
timing; run it on an otherwise idle machine (it prints the load average before and after).

The machine's own ceiling comes last, measured the same way: one `fewmask train` of the widest
variant alone, then ``workers`` copies of it at once, as plain processes with no launcher. Their
throughput ratio is what any launcher could reach here: runs that share a core's caches and the
memory bus slow each other down even when each has its own core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "metaticket_glyphs.yaml"


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The `-o` overrides of every run (the sweep's and the ceiling's copies)."""
    return [
        f"train.iterations={args.iterations}",
        "train.val_episodes=0",
        f"train.test_episodes={args.test_episodes}",
        f"train.checkpoint_every={args.iterations}",
        "train.threads=1",
        "train.progress=false",
    ]


def sweep(out: Path, args: argparse.Namespace, launcher: list[str]) -> float:
    """Seconds of wall time of one `fewmask sweep` into ``out``."""
    overrides = run_overrides(args)
    command = [sys.executable, "-m", "fewmask.cli", "sweep", str(CONFIG), "--out", str(out)]
    command += [x for o in overrides for x in ("-o", o)]
    command += ["-x", f"backbone.options.width=[{','.join(map(str, args.widths))}]"]
    command += ["-x", f"seed=[{','.join(map(str, args.seeds))}]", "--no-progress", *launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def concurrent(out: Path, args: argparse.Namespace, copies: int) -> float:
    """Seconds of wall time of ``copies`` identical `fewmask train` runs started at once."""
    width = max(args.widths)
    command = [sys.executable, "-m", "fewmask.cli", "train", str(CONFIG)]
    for o in [*run_overrides(args), f"backbone.options.width={width}"]:
        command += ["-o", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    runs = [
        subprocess.Popen(
            [*command, "--run-dir", str(out / f"copy{i}")], env=env, stdout=subprocess.DEVNULL
        )
        for i in range(copies)
    ]
    if any(run.wait() != 0 for run in runs):
        raise SystemExit("a `fewmask train` copy failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--test-episodes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from fewmask.testing import assert_same_runs

    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    runs = len(args.widths) * len(args.seeds)
    print(f"sweep: widths {args.widths} x seeds {args.seeds} = {runs} runs, {args.iterations} it")
    with tempfile.TemporaryDirectory() as scratch:
        serial = sweep(Path(scratch) / "serial", args, [])
        local = sweep(
            Path(scratch) / "local", args, ["--launcher", "local", "--workers", str(args.workers)]
        )
        try:
            names = assert_same_runs(Path(scratch) / "serial", Path(scratch) / "local")
            same = f"identical ({len(names)} runs: results.json and checkpoints)"
        except AssertionError as exc:
            same = f"DIFFERENT: {exc}"
        alone = concurrent(Path(scratch) / "alone", args, 1)
        together = concurrent(Path(scratch) / "together", args, args.workers)
    print(f"serial: {serial:.1f} s")
    print(f"local --workers {args.workers}: {local:.1f} s")
    print(f"ratio serial / local: {serial / local:.2f}x")
    print(f"results: {same}")
    ceiling = args.workers * alone / together
    print(
        f"this machine's ceiling: one run alone {alone:.1f} s, {args.workers} copies at once "
        f"{together:.1f} s, throughput {ceiling:.2f}x; the launcher reached "
        f"{serial / local / ceiling:.0%} of it"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
