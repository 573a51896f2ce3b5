"""The ray launcher on a local 2-CPU cluster (started and stopped by the command): the runs of
`serial`; options checked before anything starts; the install hint without Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fewmask_plugin_ray import RayLauncher

import fewmask
from fewmask.testing import assert_same_runs

EXAMPLE = Path(__file__).parents[3] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.iterations=2",
    "train.val_episodes=0",
    "train.test_episodes=4",
    "train.threads=1",
    "backbone.options={hidden: [8]}",
]


def fewmask_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fewmask.cli", *args]
    return subprocess.run(command, capture_output=True, text=True)


def sweep(out: Path, *extra: str) -> list[str]:
    overrides = [x for item in TINY for x in ("-o", item)]
    return ["sweep", str(EXAMPLE), *overrides, "--out", str(out), "-x", "seed=[1,2]", *extra]


def test_a_local_ray_cluster_gives_the_runs_of_serial(tmp_path):
    serial = fewmask_cli(*sweep(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stderr
    launched = fewmask_cli(*sweep(tmp_path / "ray"), "--launcher", "ray", "-l", "local_cpus=2")
    assert launched.returncode == 0, launched.stderr
    assert assert_same_runs(tmp_path / "serial", tmp_path / "ray") == ["seed=1", "seed=2"]
    assert "(2 finished, 0 failed, 0 running, 0 queued of 2)" in launched.stderr


def test_bad_options_are_config_errors():
    """What `--launcher ray -l ...` builds before anything starts (exit 2)."""
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.create("launcher", "ray", {"num_cpus": 0})
    assert caught.value.exit_code == 2 and "$.launcher.options.num_cpus" in str(caught.value)


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(fewmask.ConfigError, match="pip install ray") as caught:
        RayLauncher(RayLauncher.config_class())
    assert caught.value.exit_code == 2
