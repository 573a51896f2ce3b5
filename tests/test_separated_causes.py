"""The pieces that separate the causes (issue 27): the ``structured`` masker, MAML with a frozen
head, per-group outer rates (the experiments' arms that use them run in test_experiments.py)."""

from __future__ import annotations

import math

import pytest
import torch

from fewmask import ConfigError, TrainConfig, Trainer, create
from fewmask.builtins.outer import OuterConfig, ScheduledLR, build_outer_optimizer
from fewmask.builtins.structured import fan_in_mask, patch_mask
from fewmask.experiments.methods import method_patch
from fewmask.testing import make_dataset


def mlp(hidden=(32, 24, 20), mask_head=True, shape=(1, 28, 28), classes=5):
    return create(
        "backbone",
        "omniglot_mlp",
        {"hidden": list(hidden), "mask_head": mask_head},
        input_shape=shape,
        num_classes=classes,
    )


def square(mask_row: torch.Tensor, shape) -> tuple[int, int, int, int]:
    """Bounding box (rows, cols) of a unit's kept pixels."""
    picture = mask_row.view(shape).sum(0) > 0
    rows, cols = picture.nonzero(as_tuple=True)
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


@pytest.mark.parametrize("k", [1, 4, 16])
def test_structured_masks_have_the_intended_patch_and_fan_in(k):
    torch.manual_seed(3)
    backbone = mlp()
    masker = create("masker", "structured", {"patch": 5, "fan_in": k})
    masker.attach(backbone)
    masks = masker.masks()
    assert list(masks) == backbone.maskable_parameter_names()
    first = masks["features.1.linear.weight"]
    assert first.shape == (32, 784)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    corners = set()
    for row in first:
        assert row.sum().item() == 25  # exactly one 5x5 window...
        r0, r1, c0, c1 = square(row, (1, 28, 28))
        assert (r1 - r0, c1 - c0) == (4, 4)  # ...contiguous: its bounding box is 5x5
        corners.add((r0, c0))
    assert len(corners) > 16  # windows at many places, not one
    for name in ("features.2.linear.weight", "features.3.linear.weight"):
        kept = masks[name].sum(1)
        assert torch.all(kept == k), name  # k inputs per deeper unit
    assert torch.all(masks["classifier.weight"] == 1)  # the head's mask full by default
    for name in masks:  # the positive constants of the constant-weight experiment
        weight = backbone.get_parameter(name)
        assert torch.all(weight == math.sqrt(2 / weight.shape[1]))


def test_structured_head_fan_in_masks_the_classifier_per_class():
    masker = create("masker", "structured", {"fan_in": 4, "head_fan_in": 2})
    masker.attach(mlp())
    assert torch.all(masker.masks()["classifier.weight"].sum(1) == 2)
    assert torch.all(masker.masks()["features.3.linear.weight"].sum(1) == 4)


def test_structured_masks_are_seeded_and_patches_keep_every_channel():
    torch.manual_seed(1)
    a = patch_mask(10, (3, 8, 8), 3)
    torch.manual_seed(1)
    assert torch.equal(a, patch_mask(10, (3, 8, 8), 3))
    per_channel = a.view(10, 3, 8, 8)
    assert torch.equal(per_channel[:, 0], per_channel[:, 2])  # a pixel's channels together
    assert torch.all(a.sum(1) == 27)
    assert torch.all(fan_in_mask((4, 3), 16).sum(1) == 3)  # fewer inputs than k: all kept


def test_structured_masker_refuses_what_it_cannot_build():
    with pytest.raises(ConfigError, match="patch"):
        create("masker", "structured", {"patch": 30}).attach(mlp())
    conv = create("backbone", "conv4", {"channels": 3}, input_shape=(1, 16, 16), num_classes=2)
    with pytest.raises(ConfigError, match="set patch: 0"):
        create("masker", "structured").attach(conv)
    create("masker", "structured", {"patch": 0, "fan_in": 2}).attach(conv)  # fan-in only


def maml_trainer(learn_head: bool) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        mlp(hidden=(16, 8), mask_head=False),
        create("masker", "dense"),
        create("inner_optimizer", "sgd", {"lr": 0.4}),
        create("objective", "maml", {"learn_head": learn_head, "lr": 0.01}),
        create("sampler", "episodic", {"ways": 5, "shots": 1}),
        {"train": make_dataset()},
        TrainConfig(iterations=3, test_episodes=2, progress=False),
    )


@pytest.mark.parametrize("learn_head", [False, True])
def test_maml_with_a_frozen_head_never_updates_the_head(learn_head):
    trainer = maml_trainer(learn_head)
    head = {"classifier.weight", "classifier.bias"}
    assert (head <= set(trainer.meta_params)) is learn_head
    before = {n: p.detach().clone() for n, p in trainer.backbone.named_parameters()}
    for _ in range(3):
        trainer.train_step()
    changed = {n for n, p in trainer.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert "features.1.linear.weight" in changed  # the body is meta-learned either way
    assert (head <= changed) is learn_head
    assert not (head & changed) or learn_head


def test_a_group_lr_scale_follows_the_schedule_at_its_own_peak():
    config = OuterConfig(optimizer="sgd", lr=1.0, schedule="cosine", warmup=2)
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = build_outer_optimizer(config, [{"params": [a]}, {"params": [b], "lr_scale": 0.1}])
    scheduler = ScheduledLR(optimizer, config, total_iterations=10)
    for _ in range(6):
        first, second = (group["lr"] for group in optimizer.param_groups)
        assert second == pytest.approx(0.1 * first)
        optimizer.step()
        scheduler.step()


def test_figure2_methods_set_the_head_option_over_the_base_objective():
    base = {"objective": {"name": "metaticket", "options": {"warmup": 500}}, "inner": {}}
    learned = method_patch("metaticket_learned_head", base)
    assert learned["objective"] == {
        "name": "metaticket",
        "options": {"warmup": 500, "learn_head": True},
    }
    frozen = method_patch("maml_frozen_head", base)
    assert frozen["objective"]["name"] == "maml"
    assert frozen["objective"]["options"]["learn_head"] is False
    assert "learn_head" not in method_patch("maml", base)["objective"]["options"]
