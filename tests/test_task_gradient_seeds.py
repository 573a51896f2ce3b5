"""tools/task_gradient_seeds.py: the Fig 2 sweep's ratios over seeds, as docs/results.md quotes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "task_gradient_seeds.py"


def write_seed(folder: Path, grad_end: float, accuracy: float) -> None:
    """20 iterations of maml at lr 0.1: gradient 1.0 for the first two, ``grad_end`` for the
    last two; dispersion 2.0 then 1.0."""
    folder.mkdir()
    with open(folder / "task_gradient.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "inner_lr", "iteration", "task_gradient", "head_dispersion"])
        for i in range(20):
            grad = 1.0 if i < 2 else grad_end if i >= 18 else 0.5
            writer.writerow(["maml", "0.1", i + 1, grad, 2.0 if i < 2 else 1.0])
    run = folder / "runs" / "maml-innerlr0.1"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"accuracy": accuracy}))


def test_ratios_and_their_spread_over_seeds(tmp_path, load_tool):
    tool = load_tool("task_gradient_seeds")
    write_seed(tmp_path / "s1", grad_end=0.5, accuracy=0.80)
    write_seed(tmp_path / "s2", grad_end=1.5, accuracy=0.90)
    rows = tool.seed_rows(tmp_path / "s1") + tool.seed_rows(tmp_path / "s2")
    assert [r["grad_ratio"] for r in rows] == [0.5, 1.5]
    assert [r["disp_ratio"] for r in rows] == [0.5, 0.5]
    table = tool.summary_table(rows).splitlines()
    assert table[2] == (
        "| maml | 0.1 | 2 | 1.00 +- 0.71 | 0.50 - 1.50 | 0.50 +- 0.00 | 85.0 +- 7.1 |"
    )


def test_the_command_writes_every_seed_and_names_a_bad_folder(tmp_path):
    write_seed(tmp_path / "s1", grad_end=0.5, accuracy=0.8)
    out_csv = tmp_path / "all.csv"
    command = [sys.executable, str(SCRIPT), str(tmp_path / "s1"), "--csv", str(out_csv)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "| maml | 0.1 | 1 | 0.50 +- 0.00 | 0.50 - 0.50 |" in out
    assert len(out_csv.read_text().splitlines()) == 2
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "values, want", [([1.0], (1.0, 1.0)), ([1.0] * 10 + [3.0] * 10, (1.0, 3.0))]
)
def test_tenths(values, want, load_tool):
    assert load_tool("task_gradient_seeds").tenths(values) == want
