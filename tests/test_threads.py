"""``train.threads``: ``auto`` picks the thread count by model size, records and prints it."""

from __future__ import annotations

import pytest
import torch

from fewmask import ConfigError, TrainConfig, Trainer, create
from fewmask.config import parse_experiment
from fewmask.runtime.threads import SMALL_WORK, choose_threads, forward_macs, task_images
from fewmask.testing import make_dataset

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_auto_uses_one_thread_for_small_models_and_the_idle_cores_for_large_ones(no_omp):
    assert choose_threads("auto", CPU, SMALL_WORK - 1, default=8, load=0).threads == 1
    large = choose_threads("auto", CPU, SMALL_WORK, default=8, load=0)
    assert large.threads == 8 and "multiply-adds" in large.reason
    assert choose_threads("auto", CPU, None, default=8, load=0).threads == 8  # size unknown
    assert choose_threads("auto", CPU, 10 * SMALL_WORK, default=1, load=0).threads == 1
    # cores that other processes keep busy are left to them (the shared 2-core machine)
    busy = choose_threads("auto", CPU, 10 * SMALL_WORK, default=2, load=3.4)
    assert busy.threads == 1 and "load 3.4" in busy.reason
    assert choose_threads("auto", CPU, 10 * SMALL_WORK, default=8, load=2.2).threads == 6


def test_auto_keeps_the_users_count_and_an_integer_is_used_as_it_is(monkeypatch):
    current = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads("auto", CPU, 10, default=8).threads == current
    assert "OMP_NUM_THREADS" in choose_threads("auto", CPU, 10, default=8).reason
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert choose_threads("auto", CUDA, 10, default=8).threads == current
    assert choose_threads(3, CPU, 10, default=8).threads == 3


def test_forward_macs_counts_from_shapes_without_touching_the_model():
    mlp = create("backbone", "omniglot_mlp", {}, input_shape=(1, 28, 28), num_classes=5)
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    rng = torch.get_rng_state()
    assert forward_macs(mlp, (1, 28, 28)) == 784 * 256 + 256 * 128 + 128 * 64 + 64 * 64 + 64 * 5
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    conv = create("backbone", "conv4", {}, input_shape=(1, 28, 28), num_classes=5)
    first = 64 * 1 * 9 * 28 * 28  # 3x3 conv, padding 1: every weight at each of 28x28 positions
    assert forward_macs(conv, (1, 28, 28)) > first
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 1})
    assert task_images(sampler) == 10
    # the measured cases of docs/performance.md fall on either side as recorded there
    assert forward_macs(mlp, (1, 28, 28)) * task_images(sampler) < SMALL_WORK


@pytest.mark.parametrize(
    "value, ok", [("auto", True), (2, True), (0, False), ("many", False), (True, False)]
)
def test_the_threads_option_is_checked(value, ok):
    data = {"backbone": "omniglot_mlp", "train": {"threads": value}}
    if ok:
        assert parse_experiment(data).train.threads == value
    else:
        with pytest.raises(ConfigError, match=r"\$\.train\.threads"):
            parse_experiment(data)


def test_the_trainer_sets_records_and_reports_the_count(tmp_path, no_omp):
    data = make_dataset()
    torch.set_num_threads(2)  # the autouse fixture restores the count after the test
    trainer = Trainer(
        create("backbone", "omniglot_mlp", {"hidden": [8]}, input_shape=(1, 28, 28), num_classes=5),
        create("masker", "dense"),
        create("inner", "sgd"),
        create("objective", "maml"),
        create("sampler", "episodic", {"ways": 5, "shots": 1}),
        {"train": data, "test": data},
        TrainConfig(iterations=1, val_episodes=0, test_episodes=2, progress=False),
        run_dir=tmp_path,
    )
    assert trainer.threads.threads == torch.get_num_threads() == 1
    assert "small model" in str(trainer.threads)
    assert trainer.fit()["threads"] == 1
