"""The submitit launcher on submitit's local executor (no Slurm needed): the runs of `serial`,
parameters checked before any job starts, requeued tasks run the same job again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fewmask_plugin_submitit import SubmititLauncher, _Work

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


def test_the_local_executor_gives_the_runs_of_serial(tmp_path):
    serial = fewmask_cli(*sweep(tmp_path / "serial"))
    assert serial.returncode == 0, serial.stderr
    launched = fewmask_cli(
        *sweep(tmp_path / "submitit"),
        "--launcher",
        "submitit",
        "-l",
        "cluster=local",
        "-l",
        "poll_s=0.2",
    )
    assert launched.returncode == 0, launched.stderr
    assert assert_same_runs(tmp_path / "serial", tmp_path / "submitit") == ["seed=1", "seed=2"]
    assert "(2 finished, 0 failed, 0 running, 0 queued of 2)" in launched.stderr
    assert list((tmp_path / "submitit" / "launcher" / "submitit").glob("*_log.out"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"parameters": {"slurm_qos_typo": "high"}}, "Unknown argument 'qos_typo'"),
        ({"cluster": "kubernetes"}, "$.launcher.options.cluster"),
        ({"timeout_min": 0}, "$.launcher.options.timeout_min"),
    ],
)
def test_bad_parameters_are_config_errors(options, message):
    """What `--launcher submitit -l ...` builds before any job starts (exit 2)."""
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.create("launcher", "submitit", options)
    assert caught.value.exit_code == 2 and message in str(caught.value)


def test_a_preempted_task_is_resubmitted_with_the_same_job():
    work = _Work(len)
    again = work.checkpoint("job")
    assert again.function is work and again.args == ("job",)
    assert again.function(*again.args) == 3


def test_without_submitit_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails
    with pytest.raises(fewmask.ConfigError, match="pip install submitit") as caught:
        SubmititLauncher(SubmititLauncher.config_class())
    assert caught.value.exit_code == 2
