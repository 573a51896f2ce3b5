"""``benchmarks/meta_step.py --tiny`` runs on CPU, prints its table, and the engine's fp32
meta-gradient matches the script's reference loop (a correctness check; timings are not checked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "meta_step.py"
COLUMNS = [
    "model",
    "algorithm",
    "malloc",
    "loop s",
    "engine s",
    "loop/engine",
    "loop peak MiB",
    "engine peak MiB",
    "GFLOP/iter",
    "loop GFLOP/s",
    "engine GFLOP/s",
    "grad diff",
]


@pytest.mark.slow
def test_tiny_benchmark_table_and_gradients(tmp_path):
    pytest.importorskip("fewmask_plugin_metaticket")
    rows_path = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--json", str(rows_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == COLUMNS
    rows = json.loads(rows_path.read_text())["rows"]
    assert len(table) == 2 + len(rows)
    pairs = {(r["model"], r["algorithm"]) for r in rows}
    assert pairs == {(m, a) for m in ("mlp5", "conv4") for a in ("maml", "metaticket")}
    for row in rows:
        assert row["gflop"] > 0 and row["loop_s"] > 0 and row["engine_s"] > 0
        assert row["grad_diff"] < 1e-5, row
