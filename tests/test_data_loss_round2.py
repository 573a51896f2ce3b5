"""Issue 22: the last data-loss paths, true messages, and input faults named (not "report it").

Each test repeats a repro of the issue at a tiny size."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fewmask.cli import main
from fewmask.errors import CheckpointWriteError, RunFileError
from fewmask.runtime.checkpoint import load_checkpoint, save_checkpoint
from fewmask.runtime.files import open_run_file
from fewmask.runtime.folder import RunFolder


@pytest.fixture
def config(tmp_path, tiny_run) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(tiny_run(2))
    return path


@pytest.fixture
def train(config) -> Callable[..., int]:
    """``train(run_dir, *overrides)``: ``fewmask train`` of the tiny config."""

    def run(run_dir: Path, *overrides: str) -> int:
        args = ["train", str(config), "--run-dir", str(run_dir)]
        return main([*args, *(x for o in overrides for x in ("-o", o))])

    return run


def _precious(tmp_path: Path) -> Path:
    notes = tmp_path / "notes.txt"
    notes.write_text("precious\n")
    return notes


# ----------------------------------------------------------------------------- 1: planted links


@pytest.mark.parametrize("name", ["run.lock", "metrics.jsonl", "config.yaml"])
def test_a_symlink_planted_in_a_run_folder_is_never_written_through(train, tmp_path, capsys, name):
    notes = _precious(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(notes)
    assert train(run) == 2
    err = capsys.readouterr().err
    assert "RunFileError" in err and f"{name} is a symbolic link" in err and "Traceback" not in err
    assert notes.read_text() == "precious\n"
    assert (run / name).is_symlink()  # left as it was


WRITERS: dict[str, Callable[[RunFolder], object]] = {
    "stopped.json": lambda run: run.write_stopped(3, "a NaN"),
    "config.yaml": lambda run: run.write_config({"seed": 1}),
    "results.json": lambda run: run.write_results({"accuracy": 0.5}),
    "resumes.jsonl": lambda run: run.record_resume(3, {"train.iterations": 9}),
}


@pytest.mark.parametrize("link", ["symbolic", "hard"])
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_run_folder_writer_refuses_links(tmp_path, name, link):
    notes = _precious(tmp_path)
    run = RunFolder(tmp_path / "run")
    run.create()
    if link == "symbolic":
        (run.path / name).symlink_to(notes)
    else:
        os.link(notes, run.path / name)
    with pytest.raises(RunFileError, match="link"):
        WRITERS[name](run)
    assert notes.read_text() == "precious\n"


def test_a_fifo_in_place_of_a_run_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "metrics.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(RunFileError, match="not a regular file"):
        open_run_file(fifo, "a")
    from fewmask.training.loggers import RunLogger

    with pytest.raises(RunFileError, match="not a regular file"):
        RunLogger(tmp_path, resume_step=1)
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # refused before anything is written


def test_force_does_not_remove_a_link_planted_in_the_run_folder(tmp_path):
    notes = _precious(tmp_path)
    run = RunFolder(tmp_path / "run")
    run.create()
    (run.path / "results.json").symlink_to(notes)
    run.discard_all()
    assert (run.path / "results.json").is_symlink() and notes.read_text() == "precious\n"


# ----------------------------------------------------------------------------- 7, 15: checkpoints


def test_resume_of_a_finished_run_without_checkpoints_says_it_finished(train, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the run finished at iteration 2" in err and "checkpoints were removed" in err
    assert "before its first checkpoint" not in err
    assert main(["test", str(run)]) == 2
    assert "the run finished" in capsys.readouterr().err


def test_a_write_cut_short_after_keeping_the_previous_leaves_no_temporary_file(tmp_path):
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_checkpoint({"iteration": 1}, latest)
    os.link(latest, previous)  # killed after keeping checkpoint.prev.pt, before the rename
    save_checkpoint({"iteration": 2}, latest, previous=previous)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert load_checkpoint(latest)["iteration"] == 2
    assert load_checkpoint(previous)["iteration"] == 1


def test_results_written_by_test_never_replace_a_file(tmp_path):
    run = RunFolder(tmp_path)
    first = run.write_test_results({"a": 1})
    second = run.write_test_results({"a": 2})
    assert first != second and json.loads(first.read_text()) == {"a": 1}


# ----------------------------------------------------------------------------- 9, 13, 16: input


def test_a_value_beyond_the_runs_float_range_is_refused_by_validate(config, capsys):
    for command in ("validate", "train"):
        assert main([command, str(config), "-o", "objective.options.lr=1.0e39"]) == 2
        err = capsys.readouterr().err
        assert "$.objective.options.lr: 1e+39 is beyond the range of float32" in err, err
    wide = ["-o", "objective.options.lr=1.0e300", "-o", "train.dtype=float64"]
    assert main(["validate", str(config), *wide]) == 0  # float64 holds it
    capsys.readouterr()
    from fewmask.config.resolve import dtype_range_problems

    nested = [("$.x", {"rates": [0.1, -1e300], "ok": 3.0e38, "n": 10**40})]
    assert dtype_range_problems(nested, "float32") == [
        "$.x.rates[1]: -1e+300 is beyond the range of float32 (at most 3.403e+38 in magnitude), "
        "which the run computes in; use a smaller value (or train.dtype: float64)"
    ]


def test_a_run_dir_beyond_the_basic_multilingual_plane_is_accepted(config, tmp_path, capsys):
    run = tmp_path / "emoji\U0001f600"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    assert (run / "results.json").is_file()
    assert main(["validate", str(config), "-o", 'run_dir="x\\ud83d\\ude00"']) == 0
    assert 'run_dir: "x\\U0001F600"' in capsys.readouterr().out  # one character


def test_thousands_of_problems_are_capped_and_counted(tmp_path, tiny_run, capsys):
    import yaml

    data = yaml.safe_load(tiny_run(2))
    data["train"].update({f"k{i}": 1 for i in range(20_000)})
    data.update({f"top{i}": 1 for i in range(100)})
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err) < 5_000, len(err)
    assert "and 19,990 more" in err and "and 90 more" in err


def test_more_problems_than_shown_are_counted():
    from fewmask.errors import MAX_PROBLEMS_SHOWN, ConfigError

    error = ConfigError([f"$.x{i}: bad" for i in range(MAX_PROBLEMS_SHOWN + 5)] + ["y" * 10**6])
    assert len(error.problems) == MAX_PROBLEMS_SHOWN + 6
    assert str(error).endswith("... and 6 more problem(s)") and len(str(error)) < 10_000


# ----------------------------------------------------------------------------- 8: a full disk


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """``ulimit -f`` in this process (Python ignores SIGXFSZ: a write past it fails EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_checkpoint_past_the_file_size_limit_names_the_file_and_keeps_the_old(tmp_path):
    import torch

    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_checkpoint({"iteration": 1}, latest)
    with file_size_limit(50_000), pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint({"iteration": 2, "w": torch.zeros(100_000)}, latest, previous=previous)
    message = str(caught.value)
    assert caught.value.errno == errno.EFBIG
    assert f"cannot write checkpoint {latest}: File too large" in message
    assert f"the previous checkpoint {latest} is kept" in message and "ulimit -f" in message
    assert load_checkpoint(latest)["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
    from fewmask.cli.errors import describe

    assert describe(caught.value)[1] == 1 and "internal error" not in describe(caught.value)[0]
    first = tmp_path / "new" / "checkpoint.pt"
    with file_size_limit(50_000), pytest.raises(CheckpointWriteError, match="none is kept"):
        save_checkpoint({"w": torch.zeros(100_000)}, first)


# ----------------------------------------------------------------------------- 5: advice


def test_test_of_a_read_only_run_advises_what_test_can_do(train, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train(run) == 0
    capsys.readouterr()
    monkeypatch.setattr("fewmask.config.schema._writable", lambda folder: False)  # root: pretend
    assert main(["test", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not writable by you: give write permission (chmod u+w" in err
    assert "--run-dir" not in err  # `fewmask test` has no such option


# ----------------------------------------------------------------------------- 11: memory


def test_the_estimate_counts_the_meta_batch_in_the_runs_dtype():
    import torch
    from torch import nn

    from fewmask.runtime.memory import estimate_memory

    sizes = {"ways": 5, "shots": 1, "queries": 15, "meta_batch": 10_000, "inner_steps": 1}
    estimate = estimate_memory(lambda: nn.Linear(784, 5), (784,), dtype=torch.float32, **sizes)
    drawn = 10_000 * 5 * 16 * 784  # uint8
    assert estimate.episode_bytes == drawn * (1 + 4)  # and the float32 copy of the whole batch
