"""Validation accuracy of runs over training, averaged per window of iterations.

    python tools/val_curve.py runs/experiments/main-table-1shot/runs/*-seed* --windows 5
    python tools/val_curve.py RUN... --tag train/accuracy --span 5000

Reads each run's ``metrics.jsonl`` (the ``val/accuracy`` rows logged every ``train.val_every``
iterations, or the rows of ``--tag``, e.g. ``train/accuracy``, the query accuracy logged every
``train.log_every``) and prints one line per run: the mean in each of ``--windows`` equal
spans of the points logged, so a curve that is still rising at the end shows it; or, with
``--span N``, in iterations 1-N, N+1-2N, ..., so that runs stopped at different iterations
compare window by window (a last, unfinished window says how many iterations it holds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def val_points(run: Path, tag: str = "val/accuracy") -> list[tuple[int, float]]:
    """``(iteration, value)`` of every ``tag`` row in ``run/metrics.jsonl``, in order."""
    points = {}
    with open(run / "metrics.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("tag") == tag:
                points[int(row["step"])] = float(row["value"])  # a resumed run logs again
    return sorted(points.items())


def window_means(points: list[tuple[int, float]], windows: int) -> list[tuple[int, int, float]]:
    """``(first, last, mean)`` over ``windows`` consecutive equal groups of the points."""
    size = max(1, len(points) // windows)
    groups = [points[i : i + size] for i in range(0, len(points), size)][:windows]
    return [(g[0][0], g[-1][0], sum(v for _, v in g) / len(g)) for g in groups if g]


def span_means(points: list[tuple[int, float]], span: int) -> list[tuple[int, int, float]]:
    """``(first, last, mean)`` per window of iterations ``k*span+1 .. (k+1)*span``."""
    groups: dict[int, list[tuple[int, float]]] = {}
    for step, value in points:
        groups.setdefault((step - 1) // span, []).append((step, value))
    return [
        (k * span + 1, g[-1][0], sum(v for _, v in g) / len(g)) for k, g in sorted(groups.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--windows", type=int, default=5, help="spans to average over")
    parser.add_argument("--span", type=int, help="iterations per window (instead of --windows)")
    parser.add_argument("--tag", default="val/accuracy", help="the metric (e.g. train/accuracy)")
    args = parser.parse_args()
    if args.windows < 1:
        parser.error(f"--windows must be at least 1, got {args.windows}")
    if args.span is not None and args.span < 1:
        parser.error(f"--span must be at least 1, got {args.span}")
    for run in args.runs:
        try:
            points = val_points(run, args.tag)
        except (OSError, ValueError, KeyError) as exc:
            print(f"val_curve: cannot read {run / 'metrics.jsonl'}: {exc}", file=sys.stderr)
            sys.exit(2)  # bad input
        if args.span:
            spans = span_means(points, args.span)
        else:
            spans = window_means(points, args.windows)
        text = "  ".join(f"{a}-{b}: {100 * m:.1f}" for a, b, m in spans)
        hint = " (train.val_episodes: 0?)" if args.tag == "val/accuracy" else ""
        print(f"{run.name}: {text or f'no {args.tag} logged{hint}'}")


if __name__ == "__main__":
    main()
