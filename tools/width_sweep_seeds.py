"""The width sweep over seeds: accuracy and the paper's two gaps per width, mean +- std.

    python tools/width_sweep_seeds.py docs/results/width_sweep.csv \\
        runs/experiments/width-sweep-small-seed2/width_sweep.csv \\
        runs/experiments/width-sweep-small-seed3/width_sweep.csv --ways 20

Each argument is one seed's ``width_sweep.csv`` (``fewmask experiment width-sweep``). For every
width and N-way that all the files hold, it prints the accuracy of each method, MAML's lead over
Meta-ticket, and IteRand's gain over Meta-ticket, in points, as mean +- sample std over the
seeds, with the smallest and largest gain, and the share of MAML's lead that IteRand closes
(mean gain / mean lead, in %; per seed in brackets, smallest - largest).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

from fewmask.experiments.common import mean_std

METHODS = ("maml", "metaticket", "metaticket_iterand")


def read_seed(path: Path) -> dict[tuple[float, int, int, str], float]:
    """``(width, ways, shots, method) -> accuracy %`` of one seed's CSV."""
    with open(path, newline="") as handle:
        return {
            (float(r["width"]), int(r["ways"]), int(r["shots"]), r["method"]): 100
            * float(r["accuracy"])
            for r in csv.DictReader(handle)
        }


def spread(values: list[float]) -> str:
    """``mean +- sample std`` of ``values`` in points, two decimals."""
    mean, std = mean_std(values)
    return f"{mean:.2f} +- {std:.2f}"


def closed(gain: list[float], lead: list[float]) -> str:
    """IteRand's mean gain as a share of MAML's mean lead, and the per-seed range, in %."""
    mean_lead = sum(lead) / len(lead)
    if mean_lead <= 0:
        return "n/a (no lead)"
    shares = [100 * g / d for g, d in zip(gain, lead) if d > 0]
    share = 100 * (sum(gain) / len(gain)) / mean_lead
    return f"{share:.0f} ({min(shares):.0f} - {max(shares):.0f})" if shares else f"{share:.0f}"


def summary_table(seeds: list[dict], ways: int | None = None) -> str:
    """One row per (ways, shots, width) that every seed holds with all three methods."""
    settings = defaultdict(int)
    for seed in seeds:
        for width, n, k, method in seed:
            if method == METHODS[0] and all((width, n, k, m) in seed for m in METHODS):
                settings[width, n, k] += 1
    common = sorted((n, k, w) for (w, n, k), count in settings.items() if count == len(seeds))
    lines = [
        "| ways | shots | width | seeds | MAML | Meta-ticket | Meta-ticket + IteRand "
        "| MAML - Meta-ticket | IteRand gain | IteRand gain min - max | gap closed % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, w in common:
        if ways is not None and n != ways:
            continue
        acc = {m: [seed[w, n, k, m] for seed in seeds] for m in METHODS}
        lead = [a - b for a, b in zip(acc["maml"], acc["metaticket"])]
        gain = [a - b for a, b in zip(acc["metaticket_iterand"], acc["metaticket"])]
        lines.append(
            f"| {n} | {k} | {w:g} | {len(seeds)} | {spread(acc['maml'])} |"
            f" {spread(acc['metaticket'])} | {spread(acc['metaticket_iterand'])} |"
            f" {spread(lead)} | {spread(gain)} | {min(gain):+.2f} - {max(gain):+.2f} |"
            f" {closed(gain, lead)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csvs", nargs="+", type=Path, help="one width_sweep.csv per seed")
    parser.add_argument("--ways", type=int, help="only this N-way")
    args = parser.parse_args()
    seeds = []
    for path in args.csvs:
        try:
            seeds.append(read_seed(path))
        except (OSError, ValueError, KeyError) as exc:
            print(f"width_sweep_seeds: cannot read {path}: {exc!r}", file=sys.stderr)
            sys.exit(2)  # bad input
    print(summary_table(seeds, args.ways))


if __name__ == "__main__":
    main()
