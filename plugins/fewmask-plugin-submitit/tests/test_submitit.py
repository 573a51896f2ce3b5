"""The submitit launcher on submitit's local executor (no Slurm needed): the runs of `serial`,
parameters checked before any job starts, requeued tasks run the same job again."""

from __future__ import annotations

import sys

import pytest
from fewmask_plugin_submitit import SubmititLauncher, _Work

import fewmask
from fewmask.testing import assert_launcher_matches_serial


def test_the_local_executor_gives_the_runs_of_serial(tmp_path):
    launcher = ["--launcher", "submitit", "-l", "cluster=local", "-l", "poll_s=0.2"]
    assert_launcher_matches_serial(tmp_path, *launcher)
    assert list((tmp_path / "launched" / "launcher" / "submitit").glob("*_log.out"))


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
