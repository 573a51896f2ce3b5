"""The run's owner and the one call: ``fewmask.train`` is what ``fewmask train`` does, the config
is resolved once, the lock taken once, the start policy applied in one place; a resume that
changes the schedule's plan re-plans it and says so; stop messages state the folder's facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fewmask
import fewmask.config.resolve
import fewmask.runtime.lock
from fewmask.builtins.outer import OuterConfig, scheduled_lr
from fewmask.cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"
TINY = [
    "train.val_episodes=0",
    "train.test_episodes=4",
    "train.progress=false",
    "backbone.options={hidden: [8]}",
]


def options(*items: str) -> list[str]:
    return [x for item in items for x in ("-o", item)]


def logged(run: Path, tag: str) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {e["step"]: e["value"] for e in map(json.loads, lines) if e["tag"] == tag}


def test_resume_with_more_iterations_replans_the_schedule(tmp_path, capsys):
    """The issue's repro at a tiny size: 8 iterations (warmup 2, cosine), then resumed to 16.
    Iterations 9-16 must follow the 16-iteration schedule, not sit at the 8-iteration end."""
    run = tmp_path / "run"
    tiny = [*TINY, "train.log_every=1", "objective.options.warmup=2"]
    assert (
        main(["train", str(EXAMPLE), *options(*tiny, "train.iterations=8"), "--run-dir", str(run)])
        == 0
    )
    assert main(["train", "--resume", str(run), *options("train.iterations=16")]) == 0
    err = capsys.readouterr().err
    assert "re-planned for 16 iterations (it was 8)" in err
    used = logged(run, "train/lr")  # the rate of the update that step `it` made
    config = OuterConfig(optimizer="sgd", lr=10.0, schedule="cosine", warmup=2)
    for it in range(9, 17):
        assert used[it] == pytest.approx(scheduled_lr(config, it - 1, 16), rel=1e-12)
    assert len({used[it] for it in range(9, 17)}) == 8  # not one final rate
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["changes"] == {"train.iterations": 16}
    assert record["schedule"]["end"] == [8, 16]
    assert record["schedule"]["lr"] == pytest.approx(scheduled_lr(config, 8, 16), rel=1e-12)


def test_resume_with_another_outer_lr_is_accepted_and_used(tmp_path, capsys):
    """The advice after a non-finite loss (a lower learning rate) can be followed."""
    run = tmp_path / "run"
    tiny = [*TINY, "train.log_every=1", "objective.name=maml"]
    assert (
        main(["train", str(EXAMPLE), *options(*tiny, "train.iterations=3"), "--run-dir", str(run)])
        == 0
    )
    change = options("train.iterations=5", "objective.options.lr=0.0005")
    assert main(["train", "--resume", str(run), *change]) == 0
    assert logged(run, "train/lr")[4] == 0.0005
    record = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["changes"]["objective.options.lr"] == 0.0005


def test_train_one_call_auto_reuses_resumes_and_starts(tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY, "train.iterations=3", "train.checkpoint_every=1"]
    first = fewmask.train(EXAMPLE, run, overrides=overrides, start="auto")
    assert first.run_dir == run and (run / "results.json").is_file()
    again = fewmask.train(EXAMPLE, run, overrides=overrides, start="auto")
    assert dict(again) == dict(first)  # reused, not retrained
    (run / "results.json").unlink()  # as if the run had stopped after its last checkpoint
    resumed = fewmask.train(EXAMPLE, run, overrides=overrides, start="auto")
    assert resumed["accuracy"] == first["accuracy"] and resumed["iteration"] == 3
    with pytest.raises(fewmask.ConfigError, match="already holds a run"):
        fewmask.train(EXAMPLE, run, overrides=overrides, start="new")


def test_train_resolves_the_config_once_and_takes_the_lock_once(tmp_path, monkeypatch):
    calls = {"resolve": 0, "lock": 0}
    resolve, acquire = fewmask.config.resolve.resolve_config, fewmask.runtime.lock.acquire

    def counting_resolve(*args, **kwargs):
        calls["resolve"] += 1
        return resolve(*args, **kwargs)

    def counting_acquire(*args, **kwargs):
        calls["lock"] += 1
        return acquire(*args, **kwargs)

    for user in ("fewmask.factory", "fewmask.config.overrides"):  # every caller of phase 2
        monkeypatch.setattr(f"{user}.resolve_config", counting_resolve)
    monkeypatch.setattr("fewmask.runtime.lock.acquire", counting_acquire)
    run = tmp_path / "run"
    assert (
        main(["train", str(EXAMPLE), *options(*TINY, "train.iterations=2"), "--run-dir", str(run)])
        == 0
    )
    assert calls == {"resolve": 1, "lock": 1}
    calls.update(resolve=0, lock=0)
    assert main(["train", "--resume", str(run), *options("train.iterations=3")]) == 0
    assert calls == {"resolve": 1, "lock": 1}


def test_a_users_own_config_yaml_in_the_run_folder_is_not_overwritten(tmp_path, capsys):
    folder = tmp_path / "proj"
    folder.mkdir()
    mine = "# my notes: keep these comments\n" + EXAMPLE.read_text()
    (folder / "config.yaml").write_text(mine)
    code = main(
        [
            "train",
            str(folder / "config.yaml"),
            "--run-dir",
            str(folder),
            *options(*TINY, "train.iterations=2"),
        ]
    )
    assert code == 2
    assert "config.yaml is not a config fewmask wrote" in capsys.readouterr().err
    assert (folder / "config.yaml").read_text() == mine
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_a_nan_before_the_first_checkpoint_says_no_checkpoint_exists(tmp_path, capsys):
    run = tmp_path / "run"
    bad = options(
        *TINY,
        "objective.name=maml",
        "objective.options.lr=1.0e30",
        "train.iterations=30",
        "train.checkpoint_every=1000",
    )
    assert main(["train", str(EXAMPLE), *bad, "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "is kept" not in err
    assert "--force" in err  # the advice that works: start again, not resume
    assert main(["test", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "is kept" not in err


def test_resume_refuses_to_move_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", str(EXAMPLE), *options(*TINY, "train.iterations=2"), "--run-dir", str(run)])
        == 0
    )
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "-o", f"run_dir={tmp_path / 'elsewhere'}"]) == 2
    assert "a run stays in its folder" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_test_with_another_model_shape_is_a_named_input_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", str(EXAMPLE), *options(*TINY, "train.iterations=2"), "--run-dir", str(run)])
        == 0
    )
    capsys.readouterr()
    assert main(["test", str(run), "-o", "sampler.options.ways=10"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the model built with -o sampler.options.ways=10" in err
    assert "internal error" not in err


def test_resuming_a_finished_run_logs_no_second_meta_test(tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", str(EXAMPLE), *options(*TINY, "train.iterations=2"), "--run-dir", str(run)])
        == 0
    )
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "metrics.jsonl").read_text() == before
    tests = [json.loads(x) for x in before.splitlines() if '"test/accuracy"' in x]
    assert len(tests) == 1


def test_meta_test_returns_one_typed_result(tmp_path):
    run = tmp_path / "run"
    fewmask.train(EXAMPLE, run, overrides=[*TINY, "train.iterations=2"])
    from fewmask.factory import build_run_trainer

    trainer = build_run_trainer(run, registry=fewmask.default_registry())
    result = fewmask.meta_test(trainer, 4)
    assert isinstance(result, fewmask.MetaTestResult)
    stored = json.loads((run / "results.json").read_text())
    assert result.to_dict() == stored  # the same episodes, the same numbers and keys
