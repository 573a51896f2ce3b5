"""``benchmarks/batched_step.py --tiny`` runs on CPU without learn2learn, says the peer is
absent, and prints every row with the batched gradient close to the exact engine's (a smoke and
correctness check; timings are not checked)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "batched_step.py"


@pytest.mark.slow
def test_tiny_batched_benchmark_runs_and_reports_learn2learn_absent():
    pytest.importorskip("fewmask_plugin_metaticket")
    if importlib.util.find_spec("learn2learn") is not None:
        pytest.skip("learn2learn is installed here; the absent case cannot be shown")
    command = [sys.executable, str(SCRIPT), "--tiny", "--repeats", "1", "--conv-repeats", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    assert "learn2learn: absent" in out
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    readme = [[c.strip() for c in r] for r in rows if r[0].strip() in ("maml", "metaticket")]
    assert {(r[0], r[1]) for r in readme} == {
        (a, e)
        for a in ("maml", "metaticket")
        for e in ("exact", "batched, dense updates", "batched")
    }
    assert all(float(r[4]) < 1e-3 for r in readme), readme  # fp32 grad diff against exact
    ratios = [r for r in rows if r[0].strip().startswith(("5-MLP", "Conv4"))]
    assert len(ratios) == 9  # three models and episodes x three engines
