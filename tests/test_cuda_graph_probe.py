"""``benchmarks/cuda_graph_probe.py``: its eager path on the CPU (CI), and on a GPU that one whole
meta-step captures into a CUDA graph whose replay gives the eager gradients."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cuda_graph_probe.py"


def probe_rows(*args: str) -> list[list[str]]:
    command = [sys.executable, str(SCRIPT), "--tiny", "--warmup", "0", "--repeats", "1", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]


def test_eager_path_on_cpu():
    pytest.importorskip("fewmask_plugin_metaticket")
    rows = probe_rows("--device", "cpu", "--models", "mlp5")
    assert [(r[1], r[2]) for r in rows] == [
        (a, e) for a in ("maml", "metaticket") for e in ("exact", "fast")
    ]
    for row in rows:
        assert float(row[3]) > 0 and row[4] == "-" and row[7] == "needs CUDA"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_replays_the_eager_gradients():
    pytest.importorskip("fewmask_plugin_metaticket")
    rows = probe_rows("--device", "cuda", "--models", "mlp5,conv4")
    assert len(rows) == 8
    for row in rows:
        assert row[7] == "ok", row
        assert float(row[6]) < 1e-4, row  # cuDNN kernels may differ by rounding between runs
