"""``benchmarks/gpu_check.py --cpu-dry-run``: every part runs its GPU code path at tiny size on
the CPU and the JSON and markdown are written, so the one-command GPU check cannot rot between
the rare sessions that are lent a GPU. Figures are not checked, only that they are there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), str(out), "--cpu-dry-run", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cpu_dry_run_writes_the_json_and_the_table(tmp_path, load_benchmark):
    pytest.importorskip("fewmask_plugin_metaticket")
    gpu_check = load_benchmark("gpu_check")
    done = run(tmp_path / "check")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "check"
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
    ]
    report = json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_check.log").read_text()
    assert report["dry_run"] is True and report["format"] == "fewmask.gpu_check"
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    for name, part in parts.items():
        assert part["status"] == "ok", (name, log[-3000:])

    environment = parts["environment"]
    assert environment["missing"] == [] == environment["failed_plugins"] and environment["torch"]
    assert "metaticket" in environment["components"]["masker"]  # found through the metadata

    tests = parts["tests"]
    assert tests["rows"] and tests["failed"] == tests["error"] == 0
    assert any("test_cuda" in row["test"] for row in tests["rows"])

    assert {r["images"] for r in parts["episodes"]["rows"]} == {"1x28x28", "3x84x84"}
    assert all(r["uint8_per_s"] > 0 and r["device"] == "cpu" for r in parts["episodes"]["rows"])

    wrn = parts["wrn"]["rows"]
    assert [(r["masker"], r["checkpoint_blocks"]) for r in wrn] == [
        ("dense", False),
        ("dense", True),
        ("metaticket", False),
        ("metaticket", True),
    ]
    assert all(r["finite"] and r["peak_gib"] is None for r in wrn)  # no GPU peak on a CPU

    rows = parts["meta_step"]["rows"]
    assert [(r["precision"], r["model"], r["engine"], r["algorithm"]) for r in rows] == list(
        gpu_check.DRY_META_STEP
    )
    for row in rows:
        assert "error" not in row, row
        assert row["loop_s"] > 0 and row["engine_s"] > 0 and row["gflop"] > 0
        reference = "fp64" if row["precision"] == "fp32" else "fp32"
        assert row[f"engine_vs_{reference}"] >= 0 and row[f"loop_vs_{reference}"] >= 0

    graph = parts["graph"]["rows"]
    assert [(r["model"], r["algorithm"], r["engine"]) for r in graph] == [
        ("mlp5", a, e) for a in ("maml", "metaticket") for e in ("exact", "fast")
    ]
    assert all(r["eager_ms"] > 0 and r["capture"] == "needs CUDA" for r in graph)

    table = (out / "gpu_check.md").read_text()
    assert table.strip() in done.stdout
    assert table.startswith("# GPU check: CPU dry run")
    headings = ("## CUDA tests", "## One meta-iteration", "## One meta-step captured")
    for heading in (*headings, "## WRN-28-10", "## Episodes"):
        assert heading in table
    models = ("| mlp5 |", "| conv4 |", "| resnet12 |")
    assert sum(line.startswith(models) for line in table.splitlines()) == len(rows) + len(graph)


@pytest.mark.slow
def test_a_part_out_of_time_is_recorded_and_the_others_still_run(tmp_path):
    done = run(tmp_path, "--parts", "environment,episodes", "--budgets", "environment=0.3")
    assert done.returncode == 0, done.stderr
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert parts["environment"]["status"] == "timeout"
    assert parts["episodes"]["status"] == "ok" and len(parts["episodes"]["rows"]) == 2
    assert "| environment | timeout |" in (tmp_path / "gpu_check.md").read_text()


def test_plugins_are_found_from_the_tree_without_installing(tmp_path, load_benchmark):
    """The metadata folder declares every plugin's entry point; on PYTHONPATH, a Python that
    has none of fewmask installed finds them there."""
    sources = load_benchmark("gpu_check").metadata_folder(tmp_path)
    assert sources[0] == SCRIPT.parents[1]
    code = (
        "import importlib.metadata as m; "
        "print('\\n'.join(f'{e.name} {e.dist.locate_file(\"\")}' "
        "for e in m.entry_points(group='fewmask')))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split("\n")
    names = {line.split()[0]: line.split()[1] for line in found if line}
    assert {"metaticket", "iterand", "lrpolicies", "timm"} <= set(names)
    assert {Path(names[n]) for n in ("metaticket", "iterand", "lrpolicies", "timm")} == {tmp_path}
