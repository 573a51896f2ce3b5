"""One writer per run folder (a lock naming its owner), and --force removes only what fewmask
wrote, only after validation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from fewmask.cli import main
from fewmask.errors import ConfigError
from fewmask.experiments.outputs import MANIFEST, discard_outputs, record
from fewmask.runtime.folder import RunFolder

HOLDER = """
import sys, time
from fewmask.runtime.lock import acquire
acquire(sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def config(tmp_path, tiny_run):
    path = tmp_path / "c.yaml"
    path.write_text(tiny_run(2))
    return path


@pytest.fixture
def holder(tmp_path):
    """A live process holding the lock of ``tmp_path / 'run'``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


def train(config, run, *extra: str) -> int:
    return main(["train", str(config), "--run-dir", str(run), *extra])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- the lock


def test_a_second_writer_is_refused_naming_the_owner(config, tmp_path, holder, capsys):
    run = tmp_path / "run"
    assert train(config, run) == 2
    err = capsys.readouterr().err
    assert f"{run} is in use by pid {holder.pid} on host {socket.gethostname()}" in err
    assert "Traceback" not in err and not (run / "checkpoint.pt").exists()
    owner = json.loads((run / "run.lock").read_text())
    assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()


def test_a_lock_left_by_a_killed_process_is_explained_and_taken_over(
    config, tmp_path, holder, capsys
):
    run = tmp_path / "run"
    holder.kill()
    holder.wait()
    assert train(config, run) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock left by pid {holder.pid}" in err
    assert "no longer running" in err
    assert not (run / "run.lock").exists(), "released when the command ends"


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    pid = dead_pid()
    (run / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert train(config, run) == 0
    assert f"lock left by pid {pid}" in capsys.readouterr().err


def test_a_lock_of_another_host_is_refused_with_the_way_out(config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text(json.dumps({"pid": 12345, "host": "elsewhere.example"}))
    assert train(config, run) == 2
    err = capsys.readouterr().err
    assert "pid 12345 on host elsewhere.example" in err and f"remove {run / 'run.lock'}" in err


def test_resume_and_force_wait_for_the_lock_too(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(config, run) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(run)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        partial = run / ".checkpoint.pt.x.tmp"
        partial.write_bytes(b"the owner's write under way")
        assert main(["train", "--resume", str(run), "-o", "train.iterations=3"]) == 2
        assert train(config, run, "--force") == 2
        assert main(["test", str(run)]) == 0  # reading is fine while a run is written
        assert partial.exists(), "nothing of a live run is cleaned up"
        for name, data in before.items():
            assert (run / name).read_bytes() == data
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert "is in use by pid" in capsys.readouterr().err


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    run = RunFolder(tmp_path / "run")
    with run.locked(), run.locked():
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()
    assert not run.lock_file.exists()
    with run.locked():  # another process sees it held
        code = f"from fewmask.runtime.lock import acquire; acquire({str(run.path)!r})"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert f"RunLockedError: {run.path} is in use by pid {os.getpid()}" in result.stderr


# ----------------------------------------------------------------------------- --force


def test_force_after_a_bad_config_deletes_nothing(tmp_path, capsys):
    """Issue 12, item 1: `experiment ... /nonexistent.yaml --out p --force` deleted p/src."""
    out = tmp_path / "p"
    (out / "runs").mkdir(parents=True)
    (out / "src").mkdir()
    (out / "src" / "model.py").write_text("# mine")
    args = ["experiment", "width-sweep", str(tmp_path / "nonexistent.yaml"), "--out", str(out)]
    assert main([*args, "--force"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (out / "src" / "model.py").read_text() == "# mine"


def test_force_refuses_a_folder_fewmask_did_not_write(tmp_path, config, capsys):
    out = tmp_path / "p"
    (out / "src").mkdir(parents=True)
    (out / "src" / "model.py").write_text("# mine")
    args = ["experiment", "mask-pictures", str(config), "--out", str(out), "--force"]
    assert main([*args, "--no-progress"]) == 2
    assert f"holds files but no {MANIFEST}" in capsys.readouterr().err
    assert (out / "src" / "model.py").read_text() == "# mine"


def test_force_removes_exactly_the_listed_outputs(tmp_path):
    out = tmp_path / "p"
    run = RunFolder(out / "runs" / "v1")
    run.write_config({"seed": 1})
    run.write_results({"accuracy": 0.5})
    (run.path / "notes.txt").write_text("mine")
    (out / "table.csv").parent.mkdir(exist_ok=True)
    (out / "table.csv").write_text("a\n")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host.2.0").write_bytes(b"")
    (out / "keep.md").write_text("mine")
    record(out, "test", [run.path, out / "table.csv", out / "tensorboard"])
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["outputs"] += ["../outside.txt", "/etc/passwd"]  # a tampered listing
    (out / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "outside.txt").write_text("mine")
    discard_outputs(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "keep.md",
        "runs",
        "runs/v1",
        "runs/v1/notes.txt",
    ]
    assert (tmp_path / "outside.txt").read_text() == "mine"


def test_force_of_a_folder_without_listing_but_empty_is_fine(tmp_path):
    (tmp_path / "p").mkdir()
    assert discard_outputs(tmp_path / "p") == []
    (tmp_path / "p" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="nothing was removed"):
        discard_outputs(tmp_path / "p")


def test_experiment_force_reruns_and_keeps_your_files(tmp_path, config, capsys):
    out = tmp_path / "p"
    args = ["experiment", "mask-pictures", str(config), "--out", str(out), "--no-progress"]
    args += ["-x", "units=2"]
    assert main(args) == 0
    assert json.loads((out / MANIFEST).read_text())["outputs"]
    (out / "notes.md").write_text("mine")
    (out / "runs" / "model" / "notes.txt").write_text("mine")
    assert main([*args, "-o", "seed=2", "--force"]) == 0
    assert (out / "notes.md").read_text() == "mine"
    assert (out / "runs" / "model" / "notes.txt").read_text() == "mine"
    assert (out / "mask_pictures.csv").is_file()
    printed = capsys.readouterr().out
    assert "## mask_pictures" in printed and "mask_pictures.csv" in printed
    assert "## notes" not in printed and "notes.md" not in printed  # yours is not a table


def test_train_force_removes_only_the_run_files(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(config, run) == 0
    (run / "notes.txt").write_text("mine")
    (run / "stopped.json").write_text("{}")
    assert train(config.parent / "missing.yaml", run, "--force") == 2  # validation first
    assert (run / "checkpoint.pt").exists()
    assert train(config, run, "--force") == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "stopped.json").exists()
    capsys.readouterr()
