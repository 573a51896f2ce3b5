"""Launchers: `serial` and `local` give the same runs; a killed launcher's grid is finished by
the same command without redoing finished runs; a failing run is isolated; bad launcher options
stop the command before any run starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fewmask.cli import main
from fewmask.runtime.checkpoint import load_checkpoint
from fewmask.testing import assert_same_runs, checkpoint_tensors_equal

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.iterations=2",
    "train.val_episodes=0",
    "train.test_episodes=4",
    "train.threads=1",
    "backbone.options={hidden: [8]}",
]
ROOT = Path(__file__).parents[1]


def options(*items: str) -> list[str]:
    return [x for item in items for x in ("-o", item)]


def sweep(out: Path, *extra: str) -> list[str]:
    return ["sweep", str(EXAMPLE), *options(*TINY), "--out", str(out), "--no-progress", *extra]


def runs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").iterdir() if p.is_dir())


def test_launchers_are_registered_components_with_checked_options(capsys):
    assert main(["plugins", "launcher"]) == 0
    listed = capsys.readouterr().out
    assert "serial" in listed and "local" in listed
    assert main(["options", "launcher.local"]) == 0
    assert "`workers`" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--launcher", "local", "--workers", "0"], "$.launcher.options.workers"),
        (["--launcher", "local", "-l", "threads=2"], "unknown key(s): threads"),
        (["--launcher", "nope"], "no launcher named 'nope'"),
        (["--launcher", "serial", "--workers", "2"], "--workers: only the local launcher"),
    ],
)
def test_bad_launcher_options_exit_2_before_any_run(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main([*sweep(out, "-x", "seed=[1,2]"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_cluster_launcher_says_what_to_install(tmp_path, capsys, monkeypatch):
    import fewmask

    monkeypatch.setenv("FEWMASK_DISABLE_PLUGINS", "submitit,ray,torchvision")
    fewmask.reset_default_registry()
    try:
        for name in ("submitit", "ray"):
            out = tmp_path / name
            assert main([*sweep(out, "-x", "seed=[1]"), "--launcher", name]) == 2
            assert f"fewmask-plugin-{name}" in capsys.readouterr().err
            assert not out.exists()
    finally:
        monkeypatch.undo()
        fewmask.reset_default_registry()


def test_local_with_two_workers_gives_the_runs_of_serial_and_tells_each_change(tmp_path, capsys):
    grid = ["-x", "seed=[1,2]", "-x", "backbone.options.width=[1,2]"]
    serial = sweep(tmp_path / "serial", *grid)
    serial.remove("--no-progress")  # as the local run, whose progress lines are checked
    assert main(serial) == 0
    local = [*sweep(tmp_path / "local", *grid), "--launcher", "local", "--workers", "2"]
    local.remove("--no-progress")
    capsys.readouterr()
    assert main(local) == 0
    err = capsys.readouterr().err
    assert_same_runs(tmp_path / "serial", tmp_path / "local")
    assert (tmp_path / "serial" / "sweep.md").read_text() == (
        tmp_path / "local" / "sweep.md"
    ).read_text()
    for run in runs(tmp_path / "local"):  # each job's output is in its folder
        assert "finished" in (run / "job.log").read_text()
        for state in ("queued", "running", "finished in"):
            assert f"[sweep] {run.name}: {state}" in err
    assert "(4 finished, 0 failed, 0 running, 0 queued of 4)" in err
    assert main(local) == 0  # the same command again: every run reused
    assert capsys.readouterr().err.count("finished before, its results are reused") == 4


def test_a_failing_run_is_isolated_and_named_with_its_log(tmp_path, capsys):
    out = tmp_path / "out"
    bad = "{name: omniglot, options: {root: " + str(tmp_path / "no-such-folder") + "}}"
    good = "{name: glyphs, options: {rotations: true}}"
    argv = [*sweep(out, "-x", f"dataset=[{good}, {bad}]"), "--launcher", "local", "--workers", "2"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    finished, failed = runs(out)[0], runs(out)[1]
    assert "glyphs" in finished.name and (finished / "results.json").is_file()
    assert not (failed / "results.json").exists()
    assert "1 of 2 runs failed" in captured.err
    assert f"({failed})" in captured.err and "DatasetError" in captured.err
    assert f"last lines of {failed / 'job.log'}" in captured.err
    assert "| missing | 0/1 |" in (out / "sweep.md").read_text()  # the table is written
    assert "missing" in captured.out  # and shown
    log = (failed / "job.log").read_text()
    argv[argv.index("--workers") + 1] = "1"
    assert main(argv) == 1  # a retry appends to the log, deletes nothing
    assert (failed / "job.log").read_text().startswith(log)
    assert (finished / "results.json").is_file()


def test_collect_only_gathers_what_finished(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(sweep(out, "-x", "seed=[1]")) == 0
    assert main([*sweep(out, "-x", "seed=[1,2]"), "--collect"]) == 0
    assert not (out / "runs" / "seed=2").exists()  # nothing was started
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0].endswith(",status") and rows[1].endswith(",finished")
    assert rows[2] == "2,,,,,,missing" and len(rows) == 3


def test_a_killed_launcher_is_finished_by_the_same_command(tmp_path):
    """Kill the launcher (and its workers) while the second run trains; the same command
    reuses the finished run (untouched), resumes the started one, and gives serial's runs."""
    grid = ["-x", "train.iterations=[2,40]", "-o", "train.checkpoint_every=2"]
    out = tmp_path / "local"
    argv = [*sweep(out, *grid), "--launcher", "local", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fewmask.cli", *argv]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    first, second = out / "runs" / "train.iterations=2", out / "runs" / "train.iterations=40"
    deadline = time.monotonic() + 120
    while not (second / "checkpoint.pt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "the second run wrote no checkpoint in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if (second / "results.json").is_file():
        pytest.skip("the second run finished before it could be killed")
    finished_at = (first / "results.json").stat().st_mtime_ns
    assert subprocess.run(command, cwd=ROOT, env=env).returncode == 0
    assert (first / "results.json").stat().st_mtime_ns == finished_at  # not redone
    log = (second / "job.log").read_text()
    assert log.count(": started") == 2 and f"resuming {second} at iteration" in log
    assert load_checkpoint(second / "checkpoint.pt")["iteration"] == 40
    assert main(sweep(tmp_path / "serial", *grid)) == 0
    assert_same_runs(tmp_path / "serial", out)


def test_checkpoint_comparison_sees_a_difference(tmp_path):
    """The helper the tests above rely on fails on a changed tensor."""
    state = {"iteration": 1, "model": {"w": torch.zeros(2)}, "config": {"run_dir": "a"}}
    other = {"iteration": 1, "model": {"w": torch.ones(2)}, "config": {"run_dir": "b"}}
    checkpoint_tensors_equal(state, {**state, "config": {"run_dir": "b"}})
    with pytest.raises(AssertionError):
        checkpoint_tensors_equal(state, other)


def test_local_warns_when_workers_times_threads_exceed_the_cores(monkeypatch, recwarn):
    from fewmask.builtins import launchers
    from fewmask.errors import FewmaskWarning

    monkeypatch.setattr(launchers.os, "cpu_count", lambda: 2)
    launchers.warn_oversubscribed(2, [1, 1])  # two one-thread runs on two cores: fine
    launchers.warn_oversubscribed(4, [1])  # one run, however many workers: fine
    assert not recwarn.list
    with pytest.warns(FewmaskWarning, match="--workers 2 x train.threads 2 = 4 threads on 2"):
        launchers.warn_oversubscribed(2, [2, 2, 1])


def test_a_worker_that_dies_fails_its_job_and_the_others_still_run(tmp_path):
    """A worker process killed under a job (out of memory, a signal) breaks the pool: that job
    fails with the reason, and the jobs after it run in a new pool."""
    import functools
    import operator

    from fewmask.builtins.launchers import LocalConfig, LocalLauncher

    jobs = [functools.partial(abs, -1), functools.partial(os._exit, 3), functools.partial(abs, -2)]
    told = []
    outcomes = LocalLauncher(LocalConfig(workers=1)).launch(
        jobs, operator.call, lambda job, state, outcome=None: told.append(state), tmp_path
    )
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], Exception) and "terminated abruptly" in str(outcomes[1])
    assert told == ["running", "done"] * 3


@pytest.mark.slow
def test_the_launcher_benchmark_runs_and_reports_identical_runs_and_the_ceiling():
    """``benchmarks/launchers.py`` at a tiny size: it prints both wall times, their ratio, that
    the two grids' runs are identical, and the machine's ceiling (timings are not checked)."""
    script = Path(__file__).parents[1] / "benchmarks" / "launchers.py"
    command = [sys.executable, str(script), "--widths", "0.5", "--seeds", "1", "2"]
    command += ["--iterations", "2", "--test-episodes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    assert "results: identical (2 runs" in out, out
    for line in ("serial: ", "local --workers 2: ", "ratio serial / local: ", "ceiling: "):
        assert line in out, out
