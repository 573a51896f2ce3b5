"""tools/width_sweep_seeds.py: the width sweep's accuracies and gaps over seeds."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "width_sweep_seeds.py"


def write_seed(path: Path, accuracies: dict[tuple[float, int, str], float]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "width", "ways", "shots", "accuracy", "ci95"])
        for (width, ways, method), acc in accuracies.items():
            writer.writerow([method, width, ways, 5, acc, 0.01])
    return path


def seed(maml: float, mt: float, iterand: float, width: float = 1.0) -> dict:
    return {
        (width, 20, "maml"): maml,
        (width, 20, "metaticket"): mt,
        (width, 20, "metaticket_iterand"): iterand,
    }


def test_gaps_over_seeds_keep_only_settings_every_seed_holds(tmp_path, load_tool):
    tool = load_tool("width_sweep_seeds")
    one = write_seed(tmp_path / "1.csv", {**seed(0.70, 0.50, 0.56), **seed(0.8, 0.7, 0.7, 2.0)})
    two = write_seed(tmp_path / "2.csv", seed(0.72, 0.54, 0.58))
    table = tool.summary_table([tool.read_seed(one), tool.read_seed(two)]).splitlines()
    assert len(table) == 3  # width 2 is in one seed only
    assert table[2] == (
        "| 20 | 5 | 1 | 2 | 71.00 +- 1.41 | 52.00 +- 2.83 | 57.00 +- 1.41 | 19.00 +- 1.41 |"
        " 5.00 +- 1.41 | +4.00 - +6.00 | 26 (22 - 30) |"
    )  # gap closed: mean gain 5 / mean lead 19; per seed 6/20 and 4/18
    assert len(tool.summary_table([tool.read_seed(one)], ways=5).splitlines()) == 2


def test_a_missing_csv_is_named_and_exits_2(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nope.csv")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "nope.csv" in done.stderr and "Traceback" not in done.stderr
