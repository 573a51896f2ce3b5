"""The engine entry from Python, ``Trainer.train_step(batch)`` and the objective's LR scheduler."""

from __future__ import annotations

import pytest
import torch

from fewmask import (
    Engine,
    Episode,
    OuterConfig,
    ScheduledLR,
    TrainConfig,
    Trainer,
    create,
)
from fewmask.builtins.outer import scheduled_lr
from fewmask.testing import make_dataset

SHAPE, WAYS = (1, 28, 28), 5


def make_trainer(iterations=6, dtype="float64", objective="maml", **options):
    torch.manual_seed(0)
    data = make_dataset(classes=6)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [8, 4]}, input_shape=SHAPE, num_classes=WAYS
    )
    masker = "dense" if objective == "maml" else "metaticket"
    return Trainer(
        backbone,
        create("masker", masker),
        create("inner_optimizer", "sgd"),
        create("objective", objective, options),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1, "queries": 2}),
        {"train": data, "test": data},
        TrainConfig(iterations=iterations, test_episodes=4, progress=False, dtype=dtype),
    )


def float_episodes(count=2, seed=0) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return [
        Episode(
            torch.rand(WAYS, *SHAPE, generator=g),
            labels,
            torch.rand(2 * WAYS, *SHAPE, generator=g),
            labels.repeat(2),
        )
        for _ in range(count)
    ]


def test_one_meta_gradient_from_python_touches_nothing():
    trainer = make_trainer()
    before = {n: p.detach().clone() for n, p in trainer.meta_params.items()}
    generator = trainer.generator.get_state()
    result = trainer.engine.meta_step(float_episodes())
    assert set(result.grads) == set(before) and result.loss.dim() == 0
    assert 0 <= result.metrics["accuracy"].item() <= 1
    assert all(p.grad is None for p in trainer.meta_params.values())
    assert all(torch.equal(p, before[n]) for n, p in trainer.meta_params.items())
    assert torch.equal(trainer.generator.get_state(), generator), "nothing was sampled"
    again = trainer.engine.meta_step(float_episodes())
    assert all(torch.equal(again.grads[n], g) for n, g in result.grads.items())


def test_train_step_with_a_batch_skips_sampling_and_applies_the_engine_gradient():
    trainer = make_trainer()
    episodes = float_episodes()
    want = trainer.engine.meta_step(episodes)
    generator = trainer.generator.get_state()
    stats = trainer.train_step(episodes)
    assert stats == {"loss": want.loss.item(), "accuracy": want.metrics["accuracy"].item()}
    assert torch.equal(trainer.generator.get_state(), generator)
    assert trainer.iteration == 1
    for name, param in trainer.meta_params.items():
        assert torch.equal(param.grad, want.grads[name])


def test_a_standalone_engine_needs_only_the_components():
    torch.manual_seed(0)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [8, 4]}, input_shape=SHAPE, num_classes=WAYS
    )
    masker = create("masker", "dense")
    masker.attach(backbone)
    engine = Engine(backbone, masker, create("inner_optimizer", "sgd"), create("objective", "maml"))
    result = engine.meta_step(float_episodes(3))
    assert set(result.grads) == {n for n, _ in backbone.named_parameters()}
    loss, metrics = engine.evaluate(float_episodes(1)[0])
    assert torch.isfinite(loss) and set(metrics) == {"accuracy"}
    with pytest.raises(ValueError, match="at least one episode"):
        engine.meta_step([])


@pytest.mark.parametrize("schedule, warmup", [("cosine", 3), ("cosine", 0), ("constant", 0)])
def test_scheduled_lr_is_bit_identical_to_the_expression(schedule, warmup):
    config = OuterConfig(optimizer="sgd", lr=10.0, schedule=schedule, warmup=warmup)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=config.lr)
    scheduler = ScheduledLR(optimizer, config, total_iterations=11)
    for it in range(13):  # past the end: the last rate stays
        assert optimizer.param_groups[0]["lr"] == scheduled_lr(config, it, 11), it
        optimizer.step()
        scheduler.step()


def trained_rates(trainer: Trainer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step()
    return rates


@pytest.mark.parametrize("saved_scheduler", [True, False], ids=["checkpoint", "older-checkpoint"])
def test_the_schedule_continues_after_resume(tmp_path, saved_scheduler):
    options = {"warmup": 2}
    whole = make_trainer(objective="metaticket", **options)
    expected = trained_rates(whole, 6)
    config = OuterConfig(optimizer="sgd", lr=10.0, schedule="cosine", warmup=2)
    assert expected == [scheduled_lr(config, it, 6) for it in range(6)]

    first = make_trainer(objective="metaticket", **options)
    trained_rates(first, 3)
    state = first.state_dict()
    assert state["scheduler"]["last_epoch"] == 3
    if not saved_scheduler:  # a checkpoint written before the scheduler was saved
        del state["scheduler"]
    second = make_trainer(objective="metaticket", **options)
    second.load_state_dict(state)
    assert trained_rates(second, 3) == expected[3:]
    for name, param in second.meta_params.items():
        assert torch.equal(param, whole.meta_params[name]), name
