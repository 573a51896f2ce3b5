"""The task-gradient sweep over seeds: each method and inner lr's ratios, mean +- std, range.

    python tools/task_gradient_seeds.py runs/experiments/task-gradient-sweep \\
        runs/experiments/task-gradient-sweep-seed2 runs/experiments/task-gradient-sweep-seed3 \\
        --csv docs/results/task_gradient_seeds.csv

Each argument is one seed's ``fewmask experiment task-gradient`` output folder. From its
``task_gradient.csv`` the tool takes, per method and inner lr, the mean of the first and the
last tenth of the iterations for the task gradient and the head dispersion (as the experiment's
own table does) and their ratio; from ``runs/<method>-innerlr<lr>/results.json`` the test
accuracy. It prints one markdown row per method and lr with the mean +- sample std over the
seeds (and the gradient ratio's smallest and largest), and with ``--csv`` writes every seed's
values.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

from fewmask.experiments.common import mean_std


def tenths(values: list[float]) -> tuple[float, float]:
    """Means of the first and the last tenth of ``values`` (at least one value each)."""
    tenth = max(1, len(values) // 10)
    return sum(values[:tenth]) / tenth, sum(values[-tenth:]) / tenth


def seed_rows(folder: Path) -> list[dict]:
    """One row per (method, inner lr) of one seed's sweep folder."""
    curves: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(folder / "task_gradient.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            key = row["method"], row["inner_lr"]
            curves[key]["grad"].append(float(row["task_gradient"]))
            if row["head_dispersion"]:
                curves[key]["disp"].append(float(row["head_dispersion"]))
    rows = []
    for (method, lr), series in curves.items():
        g0, g1 = tenths(series["grad"])
        d0, d1 = tenths(series["disp"])
        results = folder / "runs" / f"{method}-innerlr{float(lr):g}" / "results.json"
        accuracy = 100 * json.loads(results.read_text())["accuracy"]
        rows.append(
            {
                "seed_folder": folder.name,
                "method": method,
                "inner_lr": float(lr),
                "grad_first": g0,
                "grad_last": g1,
                "grad_ratio": g1 / g0,
                "disp_first": d0,
                "disp_last": d1,
                "disp_ratio": d1 / d0,
                "accuracy": accuracy,
            }
        )
    return rows


def spread(values: list[float], fmt: str) -> str:
    """``mean +- sample std`` of ``values``, each formatted with ``fmt``."""
    mean, std = mean_std(values)
    return f"{format(mean, fmt)} +- {format(std, fmt)}"


def summary_table(rows: list[dict]) -> str:
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["method"], row["inner_lr"]].append(row)
    lines = [
        "| method | inner lr | seeds | gradient last/first | min - max | head dispersion "
        "last/first | test acc % |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, lr), group in groups.items():
        ratios = [r["grad_ratio"] for r in group]
        lines.append(
            f"| {method} | {lr:g} | {len(group)} | {spread(ratios, '.2f')} |"
            f" {min(ratios):.2f} - {max(ratios):.2f} |"
            f" {spread([r['disp_ratio'] for r in group], '.2f')} |"
            f" {spread([r['accuracy'] for r in group], '.1f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="one sweep folder per seed")
    parser.add_argument("--csv", type=Path, help="write every seed's row here")
    args = parser.parse_args()
    rows = []
    for folder in args.folders:
        try:
            rows += seed_rows(folder)
        except (OSError, ValueError, KeyError) as exc:
            print(f"task_gradient_seeds: cannot read {folder}: {exc}", file=sys.stderr)
            sys.exit(2)  # bad input
    print(summary_table(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
