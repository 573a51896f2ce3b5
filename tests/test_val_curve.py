"""tools/val_curve.py: validation accuracy per window, as docs/results.md quotes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "val_curve.py"


def write_metrics(run: Path, values: dict[int, float]) -> None:
    run.mkdir()
    rows = [{"step": 5, "tag": "train/loss", "value": 9.0}]
    rows += [{"step": s, "tag": "val/accuracy", "value": v} for s, v in values.items()]
    rows.append({"step": 20, "tag": "val/accuracy", "value": 0.3})  # logged again on resume
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_windows_average_the_last_value_of_each_validation(tmp_path, load_tool):
    tool = load_tool("val_curve")
    write_metrics(tmp_path / "run", {10: 0.1, 20: 0.2, 30: 0.5, 40: 0.7})
    points = tool.val_points(tmp_path / "run")
    assert points == [(10, 0.1), (20, 0.3), (30, 0.5), (40, 0.7)]
    assert tool.window_means(points, 2) == [(10, 20, 0.2), (30, 40, 0.6)]


def test_spans_are_fixed_iteration_windows_of_any_tag(tmp_path, load_tool):
    tool = load_tool("val_curve")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "tag": "train/accuracy", "value": s / 100} for s in (10, 20, 30, 40, 50)]
    rows.append({"step": 10, "tag": "val/accuracy", "value": 0.9})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = tool.val_points(run, "train/accuracy")
    assert points == [(10, 0.1), (20, 0.2), (30, 0.3), (40, 0.4), (50, 0.5)]
    # iterations 1-20, 21-40 and the unfinished 41-60 (which ends at 50)
    assert tool.span_means(points, 20) == [
        (1, 20, pytest.approx(0.15)),
        (21, 40, pytest.approx(0.35)),
        (41, 50, 0.5),
    ]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(run), "--tag", "train/accuracy", "--span", "40"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == ["run: 1-40: 25.0  41-50: 50.0"]


def test_the_command_prints_one_line_per_run(tmp_path):
    for name in ("a", "b"):
        write_metrics(tmp_path / name, {10: 0.5, 20: 0.5})
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "a"), str(tmp_path / "b"), "--windows", "1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines() == ["a: 10-20: 40.0", "b: 10-20: 40.0"]


def test_a_missing_run_is_named_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert f"cannot read {tmp_path / 'nowhere' / 'metrics.jsonl'}" in done.stderr
    assert "Traceback" not in done.stderr
