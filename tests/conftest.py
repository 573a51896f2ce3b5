"""Fixtures shared by fewmask's own tests (the ones for plugin authors are in
``fewmask.pytest_plugin``, which the suite loads with ``-p``)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import fewmask.engine.batchnorm

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

TINY_RUN = """\
seed: 1
dataset: {name: glyphs}
sampler: {name: episodic, options: {ways: 3, shots: 1}}
backbone: {name: omniglot_mlp, options: {hidden: [8, 8]}}
objective: {name: metaticket, options: {warmup: 0}}
inner: {name: sgd, options: {lr: 0.4, steps: 1}}
"""


def _tiny_run(iterations: int, **train: object) -> str:
    options = {
        "iterations": iterations,
        "meta_batch_size": 1,
        "val_episodes": 0,
        "test_episodes": 3,
        "progress": False,
        "checkpoint_every": 1,
        **train,
    }
    fields = ", ".join(f"{key}: {json.dumps(value)}" for key, value in options.items())
    return f"{TINY_RUN}train: {{{fields}}}\n"


@pytest.fixture
def tiny_run() -> Callable[..., str]:
    """``tiny_run(iterations, **train)``: the YAML of a run that takes seconds on a CPU (glyphs,
    3-way 1-shot, an 8-8 MLP, Meta-ticket without warmup, a checkpoint every iteration, no
    validation); ``train`` adds or replaces ``train:`` options."""
    return _tiny_run


def _load_script(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_benchmark(name: str) -> ModuleType:
    return _load_script(BENCHMARKS, name)


@pytest.fixture
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark("fp32_error")``: ``benchmarks/fp32_error.py`` run as a fresh module."""
    return _load_benchmark


@pytest.fixture
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("val_curve")``: ``tools/val_curve.py`` run as a fresh module."""
    return lambda name: _load_script(BENCHMARKS.parent / "tools", name)


@pytest.fixture
def fused_batchnorm_on_tiny_inputs(monkeypatch):
    """The fused BatchNorm on inputs of every size: test models are far below the size that
    uses it (``pytestmark = pytest.mark.usefixtures("fused_batchnorm_on_tiny_inputs")``)."""
    monkeypatch.setattr(fewmask.engine.batchnorm, "MIN_NUMEL", 0)
