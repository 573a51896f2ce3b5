"""One error path for every command: a message with the path and the fix, exit 2 for bad input
and 1 for a failure at run time, a traceback only under --debug (issue 12, item 7)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from fewmask.cli import main
from fewmask.cli.errors import describe, report
from fewmask.datasets.folders import ImageFolderConfig, ImageFolderSource
from fewmask.datasets.layout import read_split_file
from fewmask.errors import DatasetError
from fewmask.runtime import memory as budget


@pytest.fixture
def config(tmp_path, tiny_run):
    path = tmp_path / "c.yaml"
    path.write_text(tiny_run(3))
    return path


def train(config, run, *overrides: str) -> int:
    args = ["train", str(config), "--run-dir", str(run)]
    return main([*args, *(x for o in overrides for x in ("-o", o))])


def test_a_bug_is_one_line_and_debug_adds_the_traceback(config, tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("fewmask.training.trainer.Trainer.test", boom)
    assert train(config, tmp_path / "a") == 1
    err = capsys.readouterr().err
    assert "fewmask: internal error: RuntimeError: boom" in err and "second line" not in err
    assert "rerun with --debug" in err and "Traceback" not in err
    assert main(["--debug", "train", str(config), "--run-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("boom' in err
    assert main(["train", str(config), "--run-dir", str(tmp_path / "c"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_an_operating_system_error_names_the_path_and_the_fix(
    config, tmp_path, capsys, monkeypatch
):
    def refuse(self, results):
        raise PermissionError(13, "Permission denied", str(self.results))

    monkeypatch.setattr("fewmask.runtime.folder.RunFolder.write_results", refuse)
    assert train(config, tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert f"PermissionError: '{tmp_path / 'run' / 'results.json'}': Permission denied" in err
    assert "check the permissions" in err and "Traceback" not in err


def test_an_unreplaceable_checkpoint_is_a_checkpoint_error(config, tmp_path, capsys, monkeypatch):
    import os

    from fewmask.runtime import checkpoint

    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            raise PermissionError(13, "Permission denied", str(src), str(dst))
        return real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    run = tmp_path / "run"
    assert train(config, run) == 1
    err = capsys.readouterr().err
    assert f"CheckpointWriteError: cannot write checkpoint {run / 'checkpoint.pt'}" in err
    assert "Traceback" not in err
    assert "Permission denied; no checkpoint of this run was written before, so none is kept" in err
    assert not list(run.glob(".checkpoint.pt.*.tmp"))
    monkeypatch.undo()
    (tmp_path / "other" / "checkpoint.pt").mkdir(parents=True)  # a folder in the way
    assert train(config, tmp_path / "other") == 1
    err = capsys.readouterr().err
    assert f"cannot write checkpoint {tmp_path / 'other' / 'checkpoint.pt'}: Is a directory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "tail",
    [b'{"step": 4, "ta', b'{"step": 5, "tag": "x\xe2\x82', b"\x00\x00\x00", b'{"step": 1e999}'],
    ids=["cut", "cut-utf8", "zeros", "overflow"],
)
def test_a_partial_last_metrics_line_does_not_block_resume(config, tmp_path, capsys, tail):
    run = tmp_path / "run"
    assert train(config, run, "train.checkpoint_every=2") == 0
    with (run / "metrics.jsonl").open("ab") as handle:
        handle.write(tail)
    assert main(["train", "--resume", str(run), "-o", "train.iterations=4"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line)["step"], int) for line in lines)
    capsys.readouterr()


def test_a_run_too_large_for_the_device_is_refused_with_the_estimate(
    config, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(budget, "available_memory", lambda device: 1 << 20)
    assert train(config, tmp_path / "run", "backbone.options.hidden=[4096, 4096]") == 2
    err = capsys.readouterr().err
    assert "ResourceError: the run needs at least" in err
    assert "more than the 1.0 MiB available on cpu" in err and "parameters" in err


def test_the_estimate_counts_parameters_without_allocating_or_drawing():
    from fewmask import create

    def build():
        return create(
            "backbone", "omniglot_mlp", {"hidden": [64, 32]}, input_shape=(1, 28, 28), num_classes=5
        )

    rng = torch.get_rng_state()
    estimate = budget.estimate_memory(
        build,
        (1, 28, 28),
        ways=5,
        shots=1,
        queries=1,
        meta_batch=4,
        inner_steps=2,
        dtype=torch.float32,
    )
    assert torch.equal(torch.get_rng_state(), rng)
    assert estimate.parameters == sum(p.numel() for p in build().parameters())
    assert estimate.activation_bytes > 0 and estimate.total > estimate.parameter_bytes


def test_describe_maps_every_kind_of_failure():
    from fewmask.errors import ConfigError, ResourceError, RunLockedError

    assert describe(ConfigError(["$.x: bad"]))[1] == 2
    assert describe(RunLockedError("in use"))[1] == 2
    assert describe(ResourceError("too big"))[1] == 2
    assert describe(DatasetError("missing"))[1] == 2
    assert describe(MemoryError()) == (describe(MemoryError())[0], 1)
    assert describe(MemoryError())[0].startswith("ResourceError: out of memory")
    oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: 68 GB")
    assert describe(oom)[0].startswith("ResourceError: out of memory")
    stream = io.StringIO()
    assert report(oom, stream=stream) == 1
    assert "report it" not in stream.getvalue() and "meta_batch_size smaller" in stream.getvalue()
    assert report(KeyError("bug"), stream=stream) == 1 and "report it" in stream.getvalue()
    message, status = describe(OSError(28, "No space left on device", "/x/checkpoint.pt"))
    assert status == 1 and "'/x/checkpoint.pt': No space left" in message and "free disk" in message


# ----------------------------------------------------------------------------- split files


@pytest.mark.parametrize("name", ["../../outside/x", "/etc", "a/../../b", "..", "a\\..\\b"])
def test_split_file_class_names_cannot_leave_the_data_root(tmp_path, name):
    """Issue 12, item 9: a class name in a split file is a folder below the root, nothing else."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["ok", name], "val": [], "test": []}))
    with pytest.raises(DatasetError) as info:
        read_split_file(str(split), "image_folder")
    assert str(split) in str(info.value) and repr(name) in str(info.value)
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    source = ImageFolderSource(
        ImageFolderConfig(root=str(root), split_file=str(split), cache_dir=str(tmp_path / "c"))
    )
    with pytest.raises(DatasetError, match="not a name inside the data root"):
        source.load("train")


def test_split_file_ordinary_nested_names_are_fine(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["Alphabet/character01", "a..b", 7]}))
    assert read_split_file(str(split), "omniglot")["train"][0] == "Alphabet/character01"
