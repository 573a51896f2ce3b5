"""Validation accuracy of runs over training, averaged per window of iterations.

    python tools/val_curve.py runs/experiments/main-table-1shot/runs/*-seed* --windows 5

Reads each run's ``metrics.jsonl`` (the ``val/accuracy`` rows logged every ``train.val_every``
iterations) and prints one line per run: the mean validation accuracy in each of ``--windows``
equal spans of the iterations logged, so a curve that is still rising at the end shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def val_points(run: Path) -> list[tuple[int, float]]:
    """``(iteration, accuracy)`` of every validation in ``run/metrics.jsonl``, in order."""
    points = {}
    with open(run / "metrics.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("tag") == "val/accuracy":
                points[int(row["step"])] = float(row["value"])  # a resumed run logs again
    return sorted(points.items())


def window_means(points: list[tuple[int, float]], windows: int) -> list[tuple[int, int, float]]:
    """``(first, last, mean)`` over ``windows`` consecutive equal groups of the points."""
    size = max(1, len(points) // windows)
    groups = [points[i : i + size] for i in range(0, len(points), size)][:windows]
    return [(g[0][0], g[-1][0], sum(v for _, v in g) / len(g)) for g in groups if g]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--windows", type=int, default=5, help="spans to average over")
    args = parser.parse_args()
    if args.windows < 1:
        parser.error(f"--windows must be at least 1, got {args.windows}")
    for run in args.runs:
        try:
            points = val_points(run)
        except (OSError, ValueError, KeyError) as exc:
            print(f"val_curve: cannot read {run / 'metrics.jsonl'}: {exc}", file=sys.stderr)
            sys.exit(2)  # bad input
        spans = window_means(points, args.windows)
        text = "  ".join(f"{a}-{b}: {100 * m:.1f}" for a, b, m in spans)
        print(f"{run.name}: {text or 'no validation logged (train.val_episodes: 0?)'}")


if __name__ == "__main__":
    main()
