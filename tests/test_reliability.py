"""Crashes lose nothing: kill -9 at random iterations and during a checkpoint write, then resume.

The resumed run must equal an uninterrupted one bit for bit on CPU: results, scores, weights,
metrics.jsonl and the TensorBoard curves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fewmask.cli import main
from fewmask.runtime.checkpoint import load_checkpoint
from fewmask.runtime.folder import RunFolder

CONFIG = """
seed: 4
backbone: {name: omniglot_mlp, options: {hidden: [128, 64]}}
objective: {name: metaticket, options: {warmup: 5}}
inner: {name: sgd, options: {test_steps: 2}}
train: {iterations: 60, val_every: 7, val_episodes: 3, test_episodes: 20, checkpoint_every: 4,
        log_every: 1, histogram_every: 10, progress: false}
"""


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(RunFolder(run_dir).tensorboard))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def assert_same_run(a: Path, b: Path) -> None:
    assert json.loads((a / "results.json").read_text()) == json.loads(
        (b / "results.json").read_text()
    )
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    state_a, state_b = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for part in ("backbone", "masker"):
        for key in state_a[part]:
            assert torch.equal(state_a[part][key], state_b[part][key]), f"{part}.{key}"
    assert tensorboard_scalars(a) == tensorboard_scalars(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run, and its config file."""
    root = tmp_path_factory.mktemp("reference")
    config = root / "config.yaml"
    config.write_text(CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        assert main(["train", str(config), "--run-dir", str(root / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "run", config


# the reference runs on one thread; the thread count changes floating-point sums
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def spawn(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fewmask.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=ONE_THREAD,
    )


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return -1
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines()[:-1] if x]
    return max(steps, default=-1)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [6, 21, 45])
def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path, kill_after):
    ref_run, config = reference
    run = tmp_path / "run"
    proc = spawn("train", str(config), "--run-dir", str(run))
    deadline = time.monotonic() + 120
    while last_step(run) < kill_after and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = last_step(run)
    assert killed_at < 60
    resumed = spawn("train", "--resume", str(run), stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert b"resuming" in err
    assert_same_run(run, ref_run)


DYING_WRITE = """
import io, os, signal, sys, torch
import fewmask.runtime.checkpoint as checkpoint
from fewmask.cli import main

real_save, calls = torch.save, []

def dying_save(obj, f):
    calls.append(1)
    if len(calls) < 3:
        return real_save(obj, f)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # dies halfway through the third checkpoint

checkpoint.torch.save = dying_save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_checkpoint(reference, tmp_path):
    ref_run, config = reference
    run = tmp_path / "run"
    script = tmp_path / "dying.py"
    script.write_text(textwrap.dedent(DYING_WRITE))
    proc = subprocess.run(
        [sys.executable, str(script), "train", str(config), "--run-dir", str(run)],
        capture_output=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert proc.returncode == -signal.SIGKILL
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the cut-short write is a temporary file"
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 8  # the second checkpoint
    assert main(["train", "--resume", str(run)]) == 0
    assert not list(run.glob(".checkpoint.pt.*.tmp"))
    assert_same_run(run, ref_run)


def test_interrupted_write_in_process_leaves_old_checkpoint(tmp_path, monkeypatch):
    from fewmask.runtime import checkpoint

    checkpoint.save_checkpoint({"iteration": 1}, tmp_path / "c.pt")

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint({"iteration": 2}, tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["iteration"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_resumed_event_file_sorts_after_the_interrupted_one(tmp_path):
    """TensorBoard reads event files in name order (creation second, host, pid): a resume within
    the same second as the crash, from a lower pid, must still come last."""
    from fewmask.training.loggers import RunLogger

    folder = tmp_path / "tensorboard"
    folder.mkdir()
    host = socket.gethostname()
    crashed = folder / f"events.out.tfevents.{int(time.time())}.{host}.99999999.0"
    crashed.write_bytes(b"")
    logger = RunLogger(tmp_path, resume_step=5)
    logger.close()
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == crashed.name and len(names) == 2


def test_metrics_lines_reach_the_file_as_they_are_logged(tmp_path):
    """A user tailing metrics.jsonl sees each scalar at once, not at the next checkpoint."""
    from fewmask.training.loggers import RunLogger

    logger = RunLogger(tmp_path)
    logger.scalar("train/loss", 1.5, 10)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    logger.close()
    assert [json.loads(line) for line in lines] == [{"step": 10, "tag": "train/loss", "value": 1.5}]


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    from fewmask.training.loggers import RunLogger

    lines = [json.dumps({"step": s, "tag": "train/loss", "value": 0.5}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "ta')
    RunLogger(tmp_path, resume_step=3).close()
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(x + "\n" for x in lines[:2])


def test_the_run_folder_names_every_file_and_cleans_up_partial_writes(tmp_path):
    from fewmask.runtime.checkpoint import save_checkpoint
    from fewmask.runtime.folder import RunFolder

    run = RunFolder(tmp_path / "run")
    assert not run.holds_run() and not run.path.exists()
    assert [p.name for p in (run.checkpoint, run.config, run.results, run.metrics)] == [
        "checkpoint.pt",
        "config.yaml",
        "results.json",
        "metrics.jsonl",
    ]
    assert run.tensorboard == run.path  # TensorBoard names the run after its folder
    run.write_results({"accuracy": 0.5})
    assert run.holds_run() and run.read_results() == {"accuracy": 0.5}
    run.write_config({"seed": 3, "train": {"iterations": 2}})
    assert run.read_config() == {"seed": 3, "train": {"iterations": 2}}
    save_checkpoint({"iteration": 2, "config": {"seed": 3}}, run.checkpoint)
    assert run.stored_config(run.load_checkpoint()) == {"seed": 3}
    partial = run.path / ".checkpoint.pt.abc123.tmp"
    partial.write_bytes(b"half")
    run.discard_partial_checkpoints()
    assert not partial.exists() and run.has_checkpoint()
    run.discard_run()
    assert not run.holds_run() and run.config.is_file()
