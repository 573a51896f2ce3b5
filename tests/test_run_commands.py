"""`fewmask test` and `fewmask train --resume` on an existing run: results beside, never over,
the training's; overrides that would change the run refused by name, the others recorded; clear
messages for a missing folder and a malformed override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewmask.cli import main
from fewmask.runtime.checkpoint import load_checkpoint

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.iterations=2",
    "train.val_episodes=0",
    "train.test_episodes=4",
    "train.progress=false",
    "backbone.options={hidden: [8]}",
]


def options(*items: str) -> list[str]:
    return [x for item in items for x in ("-o", item)]


@pytest.fixture
def run(tmp_path, capsys) -> Path:
    folder = tmp_path / "run"
    assert main(["train", str(EXAMPLE), *options(*TINY), "--run-dir", str(folder)]) == 0
    capsys.readouterr()
    return folder


def test_test_writes_beside_the_training_results_and_says_where(run, capsys):
    before = (run / "results.json").read_text()
    assert main(["test", str(run), "--episodes", "3"]) == 0
    assert main(["test", str(run), "--episodes", "5"]) == 0
    out = capsys.readouterr().out
    tests = sorted(run.glob("test-*.json"))
    assert len(tests) == 2 and (run / "results.json").read_text() == before
    assert {json.loads(p.read_text())["episodes"] for p in tests} == {3, 5}
    for path in tests:
        assert f"results: {path}" in out


def test_test_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    assert main(["test", str(tmp_path / "nonexistent")]) == 2
    assert f"{tmp_path / 'nonexistent'} does not exist" in capsys.readouterr().err


def test_resume_refuses_overrides_that_change_the_run_and_names_them(run, capsys):
    state = load_checkpoint(run / "checkpoint.pt")
    change = options("sampler.options.shots=5", "backbone.options.width=2.0", "seed=7")
    assert main(["train", "--resume", str(run), *change]) == 2
    err = capsys.readouterr().err
    for path in ("$.sampler.options.shots: 1 -> 5", "$.backbone.options.width", "$.seed: 1 -> 7"):
        assert path in err, path
    assert "Traceback" not in err and not (run / "resumes.jsonl").exists()
    assert torch.equal(  # nothing was written
        load_checkpoint(run / "checkpoint.pt")["generator"], state["generator"]
    )


def test_resume_records_the_overrides_it_accepts(run, capsys):
    extend = options("train.iterations=3", "train.test_episodes=4", "train.threads=1")
    assert main(["train", "--resume", str(run), *extend]) == 0
    err = capsys.readouterr().err
    assert f"changes recorded in {run / 'resumes.jsonl'}" in err
    (line,) = (run / "resumes.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["iteration"] == 2
    assert record["changes"] == {"train.iterations": 3, "train.threads": 1}
    assert load_checkpoint(run / "checkpoint.pt")["config"]["train"]["iterations"] == 3


def test_test_refuses_a_different_model(run, capsys):
    assert main(["test", str(run), *options("backbone.options.width=2.0")]) == 2
    assert "$.backbone.options.width" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_malformed_override_is_a_config_error(command, capsys, tmp_path):
    args = [command, str(EXAMPLE), "-o", "train.iterations=[1,"]
    assert main(args + (["--run-dir", str(tmp_path)] if command == "train" else [])) == 2
    err = capsys.readouterr().err
    assert "-o 'train.iterations=[1,': the value is not valid YAML" in err
    assert "Traceback" not in err


def test_train_prints_the_thread_count(run, capsys, tmp_path):
    again = ["train", str(EXAMPLE), *options(*TINY, "train.threads=1"), "--run-dir", str(tmp_path)]
    assert main(again) == 0
    assert "threads: 1 CPU thread (train.threads)" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["threads"] == 1
