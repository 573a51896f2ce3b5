"""Trainer: checkpoints, resume, TensorBoard events, NaN guard, sampler, the CLI end to end."""

from __future__ import annotations

import json

import attrs
import pytest
import torch
import yaml

from fewmask import (
    CheckpointError,
    DatasetError,
    EngineOptions,
    FewmaskWarning,
    NonFiniteError,
    TrainConfig,
    Trainer,
    build_trainer,
    create,
)
from fewmask.cli import main
from fewmask.runtime.checkpoint import load_checkpoint
from fewmask.testing import make_dataset


def make_trainer(run_dir=None, masker="metaticket", iterations=6, cross_domain=None, **train):
    torch.manual_seed(0)
    data = make_dataset()
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [16, 8]}, input_shape=(1, 28, 28), num_classes=5
    )
    objective = "metaticket" if masker == "metaticket" else "maml"
    options = {"warmup": 2} if objective == "metaticket" else {}
    config = TrainConfig(
        iterations=iterations,
        val_every=3,
        val_episodes=4,
        test_episodes=10,
        checkpoint_every=3,
        log_every=1,
        histogram_every=3,
        progress=False,
        **train,
    )
    return Trainer(
        backbone,
        create("masker", masker),
        create("inner_optimizer", "sgd"),
        create("objective", objective, options),
        create("sampler", "episodic", {"ways": 5, "shots": 2, "queries": 3}),
        {"train": data, "val": data, "test": make_dataset(seed=1)},
        config,
        seed=3,
        run_dir=run_dir,
        cross_domain=cross_domain,
    )


@pytest.mark.parametrize("masker", ["metaticket", "dense"])
def test_resume_continues_exactly(tmp_path, masker):
    full = make_trainer(tmp_path / "full", masker)
    full_results = full.fit()

    part = make_trainer(tmp_path / "part", masker)
    part._open_logger()
    for _ in range(3):
        part.train_step()
    part.save()
    part.logger.close()
    resumed = make_trainer(tmp_path / "part", masker)
    resumed.resume()
    assert resumed.iteration == 3
    assert resumed.fit() == full_results
    for a, b in zip(full.masker.state_dict().values(), resumed.masker.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.backbone.state_dict().values(), resumed.backbone.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_callbacks_run_after_each_iterations_logging_and_before_its_checkpoint(tmp_path):
    seen = []

    def callback(trainer):
        it = trainer.iteration
        logged = [json.loads(line) for line in trainer.run.metrics.read_text().splitlines()]
        assert ("train/loss", it) in [(m["tag"], m["step"]) for m in logged]  # logged first
        checkpoint = trainer.run.checkpoint
        seen.append((it, load_checkpoint(checkpoint)["iteration"] if checkpoint.exists() else None))

    trainer = make_trainer(tmp_path)
    trainer.fit(callbacks=[callback])
    # the checkpoint of iteration 3 is written after its callbacks
    assert seen == [(1, None), (2, None), (3, None), (4, 3), (5, 3), (6, 3)]

    resumed = make_trainer(tmp_path)
    resumed.resume(tmp_path / "checkpoint.prev.pt")  # iteration 3
    calls = []
    resumed.fit(callbacks=[lambda t: calls.append(t.iteration), lambda t: calls.append(-1)])
    assert calls == [4, -1, 5, -1, 6, -1]


def test_checkpoint_holds_everything_and_corruption_is_detected(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == 6
    assert {"backbone", "masker", "optimizer", "generator", "torch_rng"} <= set(state)
    assert any(k.startswith("scores.") for k in state["masker"]) and "thresholds" in state["masker"]
    assert not list(tmp_path.glob(".checkpoint.pt.*.tmp")), "no temporary files left behind"
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    resumed = make_trainer(tmp_path)
    with pytest.warns(FewmaskWarning, match="truncated or corrupt.*; using the previous"):
        resumed.resume()  # the checkpoint before it, kept beside it
    assert resumed.iteration == 3
    (tmp_path / "checkpoint.prev.pt").unlink()
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        make_trainer(tmp_path).resume()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        make_trainer(tmp_path / "empty").resume()


def test_tensorboard_events_and_metrics_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(tmp_path).fit()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})  # in the run folder
    events.Reload()
    tags = events.Tags()
    for tag in [
        "train/loss",
        "train/accuracy",
        "train/lr",
        "val/accuracy",
        "sparsity/overall",
        "sparsity/features.1.linear.weight",
    ]:
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 7))
    assert any(t.startswith("scores/") for t in tags["histograms"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["accuracy"] <= 1 and results["episodes"] == 10


def test_non_finite_loss_stops_with_iteration_and_keeps_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, masker="dense", iterations=3)
    trainer.fit()
    trainer.train_config = attrs.evolve(trainer.train_config, iterations=9)
    inner = trainer.engine.inner
    inner.rates = dict.fromkeys(inner.rates, 1e30)  # the inner loop diverges from now on
    with pytest.raises(NonFiniteError, match="at iteration 3"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 3


def test_sampler_episodes_are_valid_and_seeded(tiny_dataset):
    sampler = create("sampler", "episodic", {"ways": 4, "shots": 2, "queries": 3})
    ep = sampler.sample(tiny_dataset, torch.Generator().manual_seed(1))
    assert ep.support_x.shape == (8, 1, 28, 28) and ep.query_x.shape == (12, 1, 28, 28)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ep.query_y.bincount().tolist() == [3, 3, 3, 3]
    assert ep.support_x.dtype == torch.uint8, "images stay uint8 until Episode.to"
    as_float = ep.to("cpu", torch.float64)
    assert as_float.support_x.dtype == torch.float64 and float(as_float.query_x.max()) <= 1.0
    torch.testing.assert_close(as_float.support_x * 255, ep.support_x.double())
    images = torch.cat([ep.support_x, ep.query_x]).flatten(1)
    assert len({tuple(r.tolist()) for r in images}) == 20, "no image drawn twice"
    again = sampler.sample(tiny_dataset, torch.Generator().manual_seed(1))
    assert torch.equal(again.query_x, ep.query_x)
    many = sampler.sample_many(tiny_dataset, torch.Generator().manual_seed(1), 50)
    again_many = sampler.sample_many(tiny_dataset, torch.Generator().manual_seed(1), 50)
    assert all(torch.equal(a.query_x, b.query_x) for a, b in zip(many, again_many))
    firsts = torch.stack([m.support_x[0] for m in many]).flatten(1)
    assert len({tuple(r.tolist()) for r in firsts}) > 5, "episodes differ"
    too_many = create("sampler", "episodic", {"ways": 4, "shots": 3, "queries": 4})
    with pytest.raises(Exception, match="fewer than shots \\+ queries = 7"):
        too_many.check(tiny_dataset)


CONFIG = """
run_dir: {run}
backbone: {{name: omniglot_mlp, options: {{hidden: [8, 8]}}}}
objective: {{name: metaticket, options: {{warmup: 1}}}}
inner: {{name: sgd, options: {{test_steps: 2}}}}
train: {{iterations: 4, val_every: 2, val_episodes: 3, test_episodes: 20, checkpoint_every: 2}}
"""


def test_cli_train_resume_and_test(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(run=tmp_path / "run"))
    assert main(["train", str(config), "-o", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "meta-test 5-way 1-shot" in out and "+-" in out and "(95% CI)" in out
    copy = tmp_path / "run" / "config.yaml"
    assert yaml.safe_load(copy.read_text())["train"]["iterations"] == 4
    assert main(["train", str(config)]) == 2, "refuses to overwrite a run"
    assert "--resume" in capsys.readouterr().err
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    (moved / "config.yaml").write_text("train: {iterations: [not a number\n")  # never read
    resume = ["train", "--resume", str(moved), "-o", "train.iterations=6"]
    assert main([*resume, "-o", "train.progress=false"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert json.loads((moved / "results.json").read_text())["iteration"] == 6
    saved = load_checkpoint(moved / "checkpoint.pt")["config"]
    assert saved["train"]["iterations"] == 6 and saved["run_dir"] == str(moved)
    assert yaml.safe_load((moved / "config.yaml").read_text()) == saved, "the copy follows"
    (moved / "config.yaml").unlink()
    assert main(["test", str(moved), "--episodes", "7", "-o", "train.progress=false"]) == 0
    assert "7 episodes, iteration 6" in capsys.readouterr().out


def test_cli_resume_and_test_need_a_checkpoint(tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    assert main(["test", str(nowhere)]) == 2
    assert f"RUN_DIR: {nowhere} does not exist" in capsys.readouterr().err
    nowhere.mkdir()
    assert main(["test", str(nowhere)]) == 2
    err = capsys.readouterr().err
    assert f"RUN_DIR: no checkpoint at {nowhere / 'checkpoint.pt'}" in err
    assert "Traceback" not in err
    run = tmp_path / "run"  # died before its first checkpoint: only the config copy exists
    run.mkdir()
    (run / "config.yaml").write_text(CONFIG.format(run=run))
    assert main(["train", "--resume", str(run)]) == 2
    assert f"fewmask train {run / 'config.yaml'} --run-dir {run}" in capsys.readouterr().err
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 2
    assert "pass no CONFIG" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["test", str(run)]) == 1
    err = capsys.readouterr().err
    assert "CheckpointError" in err and str(run / "checkpoint.pt") in err
    assert "Traceback" not in err


def test_a_checkpoint_without_config_cannot_rebuild_its_trainer(tmp_path, capsys):
    make_trainer(tmp_path, iterations=1).fit()  # a Trainer from objects has no config
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "holds no config" in capsys.readouterr().err
    resumed = make_trainer(iterations=1)
    resumed.resume(tmp_path / "checkpoint.pt")  # from Python, with a Trainer built alike
    assert resumed.iteration == 1


def test_cross_domain_sets_must_come_in_the_train_shape():
    with pytest.raises(DatasetError, match="split 'big'.*match_shape"):
        make_trainer(cross_domain={"big": make_dataset(shape=(1, 32, 32))})


def test_force_starts_the_run_over(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(run=tmp_path / "run"))
    assert main(["train", str(config), "-o", "train.progress=false"]) == 0
    partial = tmp_path / "run" / ".checkpoint.pt.x.tmp"
    partial.write_bytes(b"cut short")
    args = ["train", str(config), "-o", "train.iterations=1", "-o", "train.progress=false"]
    assert main([*args, "--force"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 1
    assert not partial.exists()
    copy = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert copy["train"]["iterations"] == 1


def test_cli_errors_are_clear_and_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(run=tmp_path / "run").replace("iterations: 4", "iteratons: 4"))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "$.train: unknown key(s): iteratons" in err and "Traceback" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    config.write_text(CONFIG.format(run=tmp_path / "run2"))
    assert main(["train", str(config), "-o", "dataset.options.path=/nonexistent/g.npz"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/g.npz" in err and "Traceback" not in err


def test_same_seed_is_bit_identical_and_another_seed_differs():
    a, b = make_trainer(), make_trainer()
    ra, rb = a.fit(), b.fit()
    assert ra == rb
    for x, y in zip(a.masker.state_dict().values(), b.masker.state_dict().values()):
        assert torch.equal(x, y)
    c = make_trainer()
    c.generator.manual_seed(99)  # another episode stream
    c.fit()
    assert not torch.equal(
        c.masker.scores["features/1/linear/weight"], a.masker.scores["features/1/linear/weight"]
    )


@pytest.mark.parametrize("masker", ["metaticket", "dense"])
def test_fast_engine_trains_like_the_exact_one(masker):
    """train.engine=fast changes rounding only: float64 runs end at the same meta-parameters.

    (MAML's Linear biases before BatchNorm have a true meta-gradient of 0; AdamW turns rounding
    noise there into ~1e-10 steps, hence the absolute tolerance.)"""
    exact = make_trainer(masker=masker, dtype="float64", engine="exact")
    fast = make_trainer(masker=masker, dtype="float64", engine="fast")
    assert fast.engine.options == EngineOptions.fast() and exact.engine.options == EngineOptions()
    exact.fit()
    fast.fit()
    for name, value in exact.meta_params.items():
        torch.testing.assert_close(fast.meta_params[name], value, rtol=1e-9, atol=1e-9)


def test_engine_choice_is_validated(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("backbone: {name: omniglot_mlp}\ntrain: {engine: fastest}\n")
    assert main(["validate", str(config)]) == 2
    assert "$.train.engine: 'fastest' is not one of 'exact', 'fast'" in capsys.readouterr().err


def test_tune_malloc_is_applied_where_a_run_is_built_and_warns_where_it_cannot(monkeypatch):
    import fewmask.runtime.allocator

    calls = []
    tune = lambda: calls.append(1) or True  # noqa: E731
    monkeypatch.setattr(fewmask.runtime.allocator, "tune_glibc_malloc", tune)
    config = {
        "backbone": {"name": "omniglot_mlp", "options": {"hidden": [8]}},
        "train": {"tune_malloc": True, "progress": False},
    }
    build_trainer(config)
    build_trainer(config, ["train.tune_malloc=false"])
    make_trainer(tune_malloc=True)  # a Trainer composed in Python leaves it to its caller
    assert calls == [1]
    monkeypatch.setattr(fewmask.runtime.allocator, "tune_glibc_malloc", lambda: False)
    with pytest.warns(UserWarning, match="train.tune_malloc: not a glibc system"):
        build_trainer(config)


def test_glibc_malloc_setting_is_accepted_and_training_still_works():
    """In a child process: the setting is process-wide."""
    import platform
    import subprocess
    import sys

    code = (
        "from fewmask.runtime.allocator import tune_glibc_malloc, trim\n"
        "ok = tune_glibc_malloc(); assert trim() == ok\n"
        "import torch; x = [torch.ones(2**22) for _ in range(3)]; del x\n"
        "print(ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
