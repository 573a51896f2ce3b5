"""Meta-batch data parallelism: two CPU processes under torchrun (gloo) equal one process.

Float64 runs; the meta-parameters agree to 1e-12 (the ranks' gradient sums are associated
differently) and the meta-test accuracies are identical. One torchrun launch runs every case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fewmask import Trainer, build_trainer
from fewmask.cli import main
from fewmask.runtime.checkpoint import load_checkpoint
from fewmask.runtime.distributed import share

TOLERANCE = 1e-12


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("count", [0, 1, 3, 4, 7])
def test_shares_cover_every_task_once_and_differ_by_at_most_one(count, world):
    shares = [share(count, rank, world) for rank in range(world)]
    assert [i for s in shares for i in s] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory) -> Path:
    """A tiny glyph file (random images, 8 classes per split), quick to load in every process."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("glyphs") / "tiny.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (24, 20, 28, 28), dtype=np.uint8),
        class_alphabet=np.repeat(np.arange(3), 8),
        class_codepoint=np.arange(0x41, 0x41 + 24, dtype=np.int32),
        alphabets=np.array(["a", "b", "c"]),
        alphabet_split=np.array(["train", "val", "test"]),
        metadata=np.array("{}"),
    )
    return path


def experiment(glyphs: Path, run_dir: Path, objective: str, batch: int, **extra: Any) -> dict:
    """A tiny float64 experiment (plain config data)."""
    return {
        "seed": 5,
        "run_dir": str(run_dir),
        "dataset": {"name": "glyphs", "options": {"path": str(glyphs)}},
        "backbone": {"name": "omniglot_mlp", "options": {"hidden": [16, 8]}},
        "objective": {"name": objective, "options": {"warmup": 1} if objective != "maml" else {}},
        "inner": {"name": "sgd", "options": {"test_steps": 2}},
        "train": {
            "iterations": 4,
            "meta_batch_size": batch,
            "val_every": 2,
            "val_episodes": 3,
            "test_episodes": 11,
            "checkpoint_every": 2,
            "log_every": 1,
            "histogram_every": 2,
            "dtype": "float64",
            "progress": False,
        },
        **extra,
    }


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (a free port is picked for it)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,  # a rank waiting forever on a collective fails the test, not CI
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def model_state(state: dict) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v
        for part in ("backbone", "masker")
        for k, v in state[part].items()
        if isinstance(v, torch.Tensor)
    }


def assert_close_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal to 1e-12; except that a Linear bias right before BatchNorm has a zero gradient up
    to rounding, which MAML's AdamW normalises into steps of its own (BatchNorm cancels them)."""
    assert a.keys() == b.keys()
    for key in a:
        atol = 1e-9 if key.endswith("linear.bias") else TOLERANCE
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def assert_same_results(a: dict, b: dict) -> None:
    """Identical meta-test accuracy; the mean query loss agrees to rounding."""
    assert a.pop("loss") == pytest.approx(b.pop("loss"), rel=TOLERANCE)
    assert a == b


WORKER = """
import json, sys, torch
from fewmask import NonFiniteError, build_trainer
from fewmask.runtime import distributed
from fewmask.cli import main

cases_file, out_dir, cli_config, cli_run = sys.argv[1:]


def engine_batch(trainer):
    data, generator = trainer.datasets["train"], torch.Generator().manual_seed(0)
    return trainer.sampler.sample_many(data, generator, 3)


out = {}
for name, config in json.loads(open(cases_file).read()).items():
    if name == "resume":  # 2 iterations, checkpoint, a new Trainer resumes and finishes
        first = build_trainer(config)
        first.train_step(), first.train_step(), first.save()
        trainer = build_trainer(config)
        trainer.resume()
        results = trainer.fit()
    elif name == "nan":  # rank 1 alone diverges at iteration 2
        trainer = build_trainer(config)
        trainer.train_step(), trainer.train_step()
        if distributed.rank() == 1:
            inner = trainer.engine.inner
            inner.rates = dict.fromkeys(inner.rates, float("nan"))
        try:
            trainer.train_step()
            results = "no error"
        except NonFiniteError as exc:
            results = str(exc)
    elif name == "engine":  # one meta-step from Python: the engine splits and all-reduces
        trainer = build_trainer(config)
        result = trainer.engine.meta_step(engine_batch(trainer))
        results = {"loss": result.loss, "metrics": result.metrics, "grads": result.grads}
    else:
        trainer = build_trainer(config)
        results = trainer.fit()
    state = {part: getattr(trainer, part).state_dict() for part in ("backbone", "masker")}
    out[name] = {"results": results, "state": state}
torch.save(out, f"{out_dir}/rank{distributed.rank()}.pt")
# last, as `torchrun -m fewmask.cli train ...` runs it (it leaves the process group at the end)
sys.exit(main(["train", cli_config, "--run-dir", cli_run]))
"""


@pytest.fixture(scope="module")
def launch(glyphs, tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """One torchrun launch (2 ranks) of every case, then of ``fewmask train`` (the CLI case)."""
    root = tmp_path_factory.mktemp("torchrun")
    iterand = {
        "name": "iterand",
        "options": {"base": {"name": "metaticket"}, "period": 1, "rate": 0.5},
    }
    cases = {
        "maml": experiment(glyphs, root / "maml", "maml", 4),
        "one_task": experiment(glyphs, root / "one_task", "metaticket", 1),
        "resume": experiment(glyphs, root / "resume", "metaticket", 4, masker=iterand),
        "nan": experiment(glyphs, root / "nan", "maml", 4),
        "engine": experiment(glyphs, root / "engine", "maml", 3),
        "cli": experiment(glyphs, root / "cli-single", "metaticket", 3),
    }
    (root / "cases.json").write_text(json.dumps({k: v for k, v in cases.items() if k != "cli"}))
    (root / "cli.json").write_text(json.dumps(cases["cli"]))
    (root / "worker.py").write_text(WORKER)
    proc = torchrun(
        *(str(root / name) for name in ("worker.py", "cases.json", ".", "cli.json", "cli"))
    )
    assert proc.returncode == 0, proc.stderr
    return root, cases, proc


def one_process(cases: dict, name: str, run_dir: Path) -> tuple[Trainer, dict]:
    trainer = build_trainer(cases[name] | {"run_dir": str(run_dir)})
    return trainer, trainer.fit()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("maml", id="maml-4-tasks-2+2"),
        pytest.param("one_task", id="metaticket-1-task-rank1-idle"),
        pytest.param("resume", id="iterand-resumed-from-checkpoint"),
    ],
)
def test_ranks_agree_and_equal_one_process(launch, tmp_path, name):
    root, cases, _ = launch
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True)[name] for r in (0, 1)]
    assert ranks[0]["results"] == ranks[1]["results"], "every rank evaluates alike"
    states = [model_state(rank["state"]) for rank in ranks]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), f"ranks differ at {key}"
    reference, results = one_process(cases, name, tmp_path)
    assert_same_results(ranks[0]["results"], results)
    saved = load_checkpoint(root / name / "checkpoint.pt")
    assert saved["iteration"] == 4
    assert_close_states(model_state(saved), model_state(reference.state_dict()))


def test_engine_meta_step_equals_one_process(launch, tmp_path):
    """3 tasks on 2 ranks (2 + 1): every rank returns the one-process loss, metrics, grads."""
    root, cases, _ = launch
    ranks = [
        torch.load(root / f"rank{r}.pt", weights_only=True)["engine"]["results"] for r in (0, 1)
    ]
    trainer = build_trainer(cases["engine"] | {"run_dir": str(tmp_path)})
    data, generator = trainer.datasets["train"], torch.Generator().manual_seed(0)
    want = trainer.engine.meta_step(trainer.sampler.sample_many(data, generator, 3))
    for got in ranks:
        assert got["loss"].item() == pytest.approx(want.loss.item(), rel=TOLERANCE)
        assert got["metrics"].keys() == want.metrics.keys()
        for name, value in want.metrics.items():
            assert got["metrics"][name].item() == pytest.approx(value.item(), rel=1e-6)
        assert got["grads"].keys() == want.grads.keys()
        for name, grad in want.grads.items():
            atol = 1e-9 if name.endswith("linear.bias") else TOLERANCE
            torch.testing.assert_close(got["grads"][name], grad, rtol=TOLERANCE, atol=atol)
    assert all(torch.equal(ranks[0]["grads"][n], ranks[1]["grads"][n]) for n in want.grads)


def test_a_nan_on_one_rank_stops_every_rank_at_once(launch):
    root, _, _ = launch
    errors = [torch.load(root / f"rank{r}.pt", weights_only=True)["nan"]["results"] for r in (0, 1)]
    assert errors[0] == errors[1] and "at iteration 2" in errors[0]


def test_cli_train_under_torchrun_equals_one_process(launch):
    """Meta-ticket with meta-batch 3 (2 + 1 tasks); rank 0 alone prints and writes the run."""
    root, _, proc = launch
    multi, single = root / "cli", root / "cli-single"
    assert main(["train", str(root / "cli.json")]) == 0
    assert proc.stdout.count("meta-test 5-way 1-shot") == 1, "only rank 0 prints"
    assert (multi / "config.yaml").is_file()
    assert_same_results(
        json.loads((multi / "results.json").read_text()),
        json.loads((single / "results.json").read_text()),
    )
    a, b = load_checkpoint(multi / "checkpoint.pt"), load_checkpoint(single / "checkpoint.pt")
    assert a["iteration"] == b["iteration"] == 4
    assert torch.equal(a["generator"], b["generator"]), "the same episodes were drawn"
    assert_close_states(model_state(a), model_state(b))
    lines = [
        [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (multi, single)
    ]
    assert [(m["step"], m["tag"]) for m in lines[0]] == [(m["step"], m["tag"]) for m in lines[1]]
    for x, y in zip(*lines):  # the engine averages task accuracies in float32
        rel = 1e-6 if x["tag"] == "train/accuracy" else TOLERANCE
        assert x["value"] == pytest.approx(y["value"], rel=rel, abs=TOLERANCE), x
    assert len(list(multi.glob("events.out.tfevents.*"))) == 1
