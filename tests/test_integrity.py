"""Nothing silent: checkpoints are verified, the previous one is kept, non-finite states are never
saved, a diverging or stopped run says so."""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from fewmask.cli import main
from fewmask.errors import CheckpointError, CheckpointWriteError, FewmaskWarning, NonFiniteError
from fewmask.runtime.checkpoint import load_checkpoint, save_checkpoint, state_digest
from fewmask.runtime.folder import RunFolder


def state() -> dict:
    return {
        "iteration": 3,
        "config": {"seed": 1, "nested": [1, 2.5, None, True, "x"]},
        "masker": {"scores.w": torch.arange(12, dtype=torch.float32).view(3, 4)},
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": []},
    }


@pytest.fixture
def tiny(tiny_run) -> str:
    """This file's run: four iterations, every one logged."""
    return tiny_run(4, log_every=1)


@pytest.fixture
def train(tmp_path, tiny) -> Callable[..., int]:
    """``train(*overrides)``: ``fewmask train`` of ``tiny`` into ``tmp_path / "run"``."""
    config = tmp_path / "c.yaml"
    config.write_text(tiny)

    def run(*overrides: str) -> int:
        args = ["train", str(config), "--run-dir", str(tmp_path / "run")]
        return main([*args, *(x for o in overrides for x in ("-o", o))])

    return run


# ----------------------------------------------------------------------------- digests


def test_the_digest_covers_every_value_and_tensor_byte():
    base = state_digest(state())
    changed = state()
    scores = changed["masker"]["scores.w"].view(-1)
    scores[5] = torch.nextafter(scores[5], torch.tensor(6.0))
    assert state_digest(changed) != base  # one bit of one float
    for edit in (
        lambda s: s.update(iteration=4),
        lambda s: s["config"]["nested"].__setitem__(1, 2.5000001),
        lambda s: s["config"].update(seed=True),  # True == 1, but not the same value
        lambda s: s["masker"].update({"scores.w": s["masker"]["scores.w"].double()}),
        lambda s: s["masker"].update({"scores.w": s["masker"]["scores.w"].view(4, 3)}),
    ):
        other = state()
        edit(other)
        assert state_digest(other) != base
    assert state_digest(state()) == base


@pytest.mark.parametrize("flips", [1, 8])
def test_flipped_bytes_in_a_checkpoint_are_a_checkpoint_error(tmp_path, flips):
    path = tmp_path / "c.pt"
    save_checkpoint(state(), path)
    data = bytearray(path.read_bytes())
    # the tensor bytes are stored verbatim: flip bits inside the scores' storage
    start = bytes(data).find(torch.arange(12, dtype=torch.float32).numpy().tobytes())
    assert start > 0
    for i in range(flips):
        data[start + 4 * (i + 1)] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path} fails its integrity check"):
        load_checkpoint(path)


def test_unsafe_foreign_empty_and_truncated_files_are_named(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError, match=r"refused: it is a pickle that would import and run"):
        load_checkpoint(evil)
    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="unsafe or malicious"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="is not a fewmask checkpoint"):
        load_checkpoint(other)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(empty)
    save_checkpoint(state(), tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="c.pt is truncated or corrupt"):
        load_checkpoint(tmp_path / "c.pt")


def test_an_unwritable_checkpoint_is_a_clear_error_and_the_old_one_stays(tmp_path):
    save_checkpoint(state(), tmp_path / "c.pt")
    (tmp_path / "d.pt").mkdir()  # a folder where the checkpoint goes cannot be replaced
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint .*d\.pt: .*kept"):
        save_checkpoint(state(), tmp_path / "d.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "d.pt"]


# ----------------------------------------------------------------------------- previous one


def damage_contents(path: Path) -> None:
    """Flip the first byte from a third of the file on that the checkpoint no longer verifies
    (a byte of the zip's alignment padding changes nothing that is loaded, so it is skipped)."""
    original = path.read_bytes()
    for offset in range(len(original) // 3, len(original)):
        data = bytearray(original)
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            load_checkpoint(path)
        except CheckpointError:
            return
    raise AssertionError(f"no single flipped byte of {path} fails verification")


def test_the_previous_checkpoint_is_kept_and_used_when_the_latest_fails(train, tmp_path, capsys):
    assert train() == 0
    run = RunFolder(tmp_path / "run")
    assert load_checkpoint(run.checkpoint)["iteration"] == 4
    assert load_checkpoint(run.previous_checkpoint)["iteration"] == 3
    damage_contents(run.checkpoint)
    assert main(["train", "--resume", str(run.path), "-o", "train.iterations=6"]) == 0
    err = capsys.readouterr().err
    assert f"warning: checkpoint {run.checkpoint}" in err
    assert f"using the previous checkpoint {run.previous_checkpoint} (iteration 3)" in err
    assert f"resuming {run.path} at iteration 3 from {run.previous_checkpoint}" in err
    assert load_checkpoint(run.checkpoint)["iteration"] == 6  # the bad one was replaced
    assert main(["train", "--resume", str(run.path), "-o", "train.iterations=7"]) == 0
    assert f"at iteration 6 from {run.checkpoint}" in capsys.readouterr().err


def test_both_checkpoints_bad_names_both(train, tmp_path, capsys):
    assert train("train.iterations=2") == 0
    run = RunFolder(tmp_path / "run")
    for path in (run.checkpoint, run.previous_checkpoint):
        path.write_bytes(path.read_bytes()[:100])
    assert main(["test", str(run.path)]) == 1
    err = capsys.readouterr().err
    assert str(run.checkpoint) in err and str(run.previous_checkpoint) in err
    assert "Traceback" not in err


def test_resume_without_a_checkpoint_is_refused_not_restarted(train, tmp_path, capsys):
    """Issue 12, item 5: no silent retraining from iteration 0 over the old metrics."""
    assert train("train.iterations=2") == 0
    run = RunFolder(tmp_path / "run")
    metrics = run.metrics.read_text()
    run.checkpoint.unlink()
    run.previous_checkpoint.unlink()
    assert main(["train", "--resume", str(run.path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert run.metrics.read_text() == metrics


# ----------------------------------------------------------------------------- non-finite values


def test_a_non_finite_state_is_never_saved(tiny, tmp_path):
    from fewmask import build_trainer

    trainer = build_trainer({**yaml.safe_load(tiny), "run_dir": str(tmp_path)})
    trainer.save()
    before = trainer.run.checkpoint.read_bytes()
    with torch.no_grad():
        next(iter(trainer.meta_params.values())).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"not writing the checkpoint .* is not finite"):
        trainer.save()
    assert trainer.run.checkpoint.read_bytes() == before


def test_nan_stops_the_run_keeps_the_last_good_checkpoint_and_test_refuses(train, tmp_path, capsys):
    """MAML with a huge outer lr: the weights explode, the loss turns NaN; the checkpoint left
    is finite, the stop is recorded and `fewmask test` does not report an accuracy."""
    status = train(
        "objective={name: maml, options: {lr: 1.0e+30, optimizer: sgd}}",
        "train.iterations=20",
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "NonFiniteError" in err and "Traceback" not in err
    run = RunFolder(tmp_path / "run")
    stopped = json.loads(run.stopped.read_text())
    assert stopped["iteration"] < 20 and "nan" in stopped["reason"]
    saved = load_checkpoint(run.checkpoint)
    assert all(torch.isfinite(t).all() for t in saved["backbone"].values() if t.is_floating_point())
    assert main(["test", str(run.path)]) == 1
    out, err = capsys.readouterr()
    assert "accuracy" not in out and f"stopped at iteration {stopped['iteration']}" in err
    assert f"remove {run.stopped}" in err


def test_nan_before_the_first_checkpoint_leaves_none_and_says_so(train, tmp_path, capsys):
    status = train(
        "objective={name: maml, options: {lr: 1.0e+30, optimizer: sgd}}",
        "train.iterations=20",
        "train.checkpoint_every=10",
    )
    assert status == 1
    run = RunFolder(tmp_path / "run")
    assert not run.has_checkpoint() and run.read_stopped() is not None
    assert main(["test", str(run.path)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_diverging_scores_warn(train, capsys):
    """Meta-ticket with a huge outer lr keeps finite losses (only the order of the scores
    matters) while the scores reach ~1e31: a warning says the run diverges."""
    assert train("objective.options.lr=1.0e+30") == 0
    err = capsys.readouterr().err
    assert "warning: meta-parameter" in err and "the run is diverging" in err


def test_diverging_scores_warn_in_python(tiny, tmp_path):
    from fewmask import build_trainer

    config = yaml.safe_load(tiny.replace("warmup: 0", "warmup: 0, lr: 1.0e+30"))
    trainer = build_trainer({**config, "run_dir": str(tmp_path)})
    with pytest.warns(FewmaskWarning, match="outer learning rate .* far too high"):
        trainer.fit()
