"""Meta-ticket plugin: entry-point wiring and the mask's properties (Hypothesis)."""

from __future__ import annotations

import pytest
import torch
from fewmask_plugin_metaticket import (
    MetaTicketConfig,
    MetaTicketMasker,
    straight_through_mask,
    threshold_rank,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import fewmask
from fewmask import Backbone, TrainConfig, Trainer, create, load_registry


def test_plugin_is_found_through_its_entry_point():
    registry = load_registry(autoload=False, only=["metaticket"], strict=True)
    info = registry.get("masker", "metaticket")
    assert info.cls is MetaTicketMasker
    assert info.provider.plugin == "metaticket"
    assert info.provider.distribution == "fewmask-plugin-metaticket"
    assert registry.get("objective", "metaticket").provider.version == "0.1.0"


def test_plugin_is_unknown_when_not_loaded():
    registry = load_registry(autoload=True, blocked=["metaticket"], strict=True)
    with pytest.raises(fewmask.UnknownComponentError, match="no masker named 'metaticket'"):
        registry.get("masker", "metaticket")


class OneLayer(Backbone):
    """A single maskable Linear (or Conv2d) layer plus an unmasked head, for property tests."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.layer = (
            nn.Linear(shape[1], shape[0])
            if len(shape) == 2
            else nn.Conv2d(shape[1], shape[0], shape[2])
        )
        self.head = nn.Linear(1, 1)

    def forward_features(self, x):
        return self.layer(x)

    def forward_head(self, x, pre_logits=False):
        return x

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes):
        self.head = nn.Linear(1, num_classes)

    def maskable_parameter_names(self):
        return ["layer.weight"]


shapes = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)).map(lambda s: (*s, s[2])),
)


@given(shape=shapes, sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_initial_mask_prunes_exactly_k_minus_one_and_is_binary(shape, sparsity, seed):
    torch.manual_seed(seed)
    backbone = OneLayer(shape)
    masker = MetaTicketMasker(MetaTicketConfig(init_sparsity=sparsity))
    masker.attach(backbone)
    mask = masker.masks()["layer.weight"]
    n = mask.numel()
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == threshold_rank(n, sparsity) - 1
    assert threshold_rank(n, sparsity) == 1 + round(sparsity * (n - 1))


@given(sparsity=st.floats(0.0, 0.9), steps=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_threshold_never_moves_while_scores_train(sparsity, steps, seed):
    torch.manual_seed(seed)
    backbone = OneLayer((6, 5))
    masker = MetaTicketMasker(MetaTicketConfig(init_sparsity=sparsity))
    masker.attach(backbone)
    before = masker.thresholds.clone()
    optimizer = torch.optim.SGD(masker.parameters(), lr=10.0, momentum=0.9)
    for _ in range(steps):
        x = torch.randn(4, 5)
        loss = (
            torch.func.functional_call(
                backbone,
                {"layer.weight": backbone.layer.weight * masker.masks()["layer.weight"]},
                (x,),
            )
            .pow(2)
            .sum()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(masker.thresholds, before)
    assert not any(p is masker.thresholds for p in masker.parameters())


@given(shape=shapes, seed=st.integers(0, 2**16))
def test_straight_through_score_gradient_is_weight_times_effective_weight_gradient(shape, seed):
    torch.manual_seed(seed)
    scores = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape, dtype=torch.float64)
    threshold = scores.detach().median()
    mask = straight_through_mask(scores, threshold)
    effective = weight * mask
    effective.retain_grad()
    target = torch.randn(shape, dtype=torch.float64)
    loss = ((effective - target) ** 3).sum()
    loss.backward()
    torch.testing.assert_close(scores.grad, effective.grad * weight)
    assert torch.equal(mask.detach(), (scores >= threshold).double())


@given(seed=st.integers(0, 2**16), sparsity=st.floats(0.1, 0.9))
def test_masked_out_weights_do_not_affect_the_output(seed, sparsity):
    torch.manual_seed(seed)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [6, 5]}, input_shape=(1, 3, 3), num_classes=4
    )
    masker = MetaTicketMasker(MetaTicketConfig(init_sparsity=sparsity))
    masker.attach(backbone)
    from fewmask.testing import masked_forward

    x = torch.randn(7, 1, 3, 3)
    params = dict(backbone.named_parameters())
    masks = {n: m.detach() for n, m in masker.masks().items()}
    out = masked_forward(backbone, params, masks, x)
    noisy = {
        n: (p + 100 * torch.randn_like(p) * (1 - masks[n])) if n in masks else p
        for n, p in params.items()
    }
    torch.testing.assert_close(masked_forward(backbone, noisy, masks, x), out)


def test_dense_start_and_weight_reinit(tiny_dataset):
    backbone = create("backbone", "omniglot_mlp", {}, input_shape=(1, 28, 28), num_classes=5)
    masker = create("masker", "metaticket")
    masker.attach(backbone)
    assert all(bool((m == 1).all()) for m in masker.masks().values())
    w = backbone.get_parameter("features.1.linear.weight")
    assert w.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.05)
    with pytest.raises(RuntimeError, match="already attached"):
        masker.attach(backbone)


def test_metaticket_learns_only_scores_and_bn_head_stay_fixed(tiny_dataset):
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [16, 8]}, input_shape=(1, 28, 28), num_classes=5
    )
    trainer = Trainer(
        backbone,
        create("masker", "metaticket"),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 2}),
        create("sampler", "episodic", {"ways": 5, "shots": 1}),
        {"train": tiny_dataset},
        TrainConfig(iterations=4, test_episodes=3, progress=False),
    )
    weights = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    scores = {n: p.detach().clone() for n, p in trainer.masker.meta_parameters().items()}
    trainer.fit()
    for name, p in backbone.named_parameters():
        assert torch.equal(p, weights[name]), f"{name} must not be meta-learned"
    assert any(not torch.equal(p, scores[n]) for n, p in trainer.masker.meta_parameters().items())


def test_metaticket_objective_needs_scores(tiny_dataset):
    backbone = create("backbone", "omniglot_mlp", {}, input_shape=(1, 28, 28), num_classes=5)
    with pytest.raises(fewmask.ConfigError, match="masker.name: metaticket"):
        Trainer(
            backbone,
            create("masker", "dense"),
            create("inner_optimizer", "sgd"),
            create("objective", "metaticket"),
            create("sampler", "episodic"),
            {"train": tiny_dataset},
        )


def test_warmup_then_cosine_schedule():
    objective = create("objective", "metaticket", {"warmup": 4})
    optimizer = objective.build_optimizer([torch.nn.Parameter(torch.zeros(1))])
    scheduler = objective.build_scheduler(optimizer, 12)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([10 * (i + 1) / 5 for i in range(4)])
    assert lrs[4] == pytest.approx(10.0)
    assert lrs[8] == pytest.approx(5.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def head_trainer(tiny_dataset, masker_options, objective_options, iterations=3, mask_head=True):
    torch.manual_seed(0)
    backbone = create(
        "backbone",
        "omniglot_mlp",
        {"hidden": [16, 8], "mask_head": mask_head},
        input_shape=(1, 28, 28),
        num_classes=5,
    )
    head = {n: p.detach().clone() for n, p in backbone.get_classifier().named_parameters()}
    trainer = Trainer(
        backbone,
        create("masker", "metaticket", {"weight_init": "constant", **masker_options}),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 1, **objective_options}),
        create("sampler", "episodic", {"ways": 5, "shots": 1}),
        {"train": tiny_dataset},
        TrainConfig(iterations=iterations, test_episodes=3, progress=False),
    )
    return trainer, head


def test_exclude_head_leaves_the_classifier_dense_and_untouched(tiny_dataset):
    trainer, head = head_trainer(tiny_dataset, {"exclude_head": True}, {})
    classifier = trainer.backbone.get_classifier()
    masks = trainer.masker.masks()
    assert "classifier.weight" in trainer.backbone.maskable_parameter_names()  # offered...
    assert "classifier.weight" not in masks  # ...but not masked: dense
    assert set(masks) == {"features.1.linear.weight", "features.2.linear.weight"}
    for name, p in classifier.named_parameters():  # not re-drawn as a constant by attach
        assert torch.equal(p.detach(), head[name])
    assert classifier.weight.std() > 0  # the backbone's random init, not the constant
    hidden = trainer.backbone.get_parameter("features.1.linear.weight")
    assert torch.all(hidden == hidden.flatten()[0])  # the body did get the constants
    trainer.fit()
    for name, p in classifier.named_parameters():  # never meta-learned either
        assert torch.equal(p.detach(), head[name])


def test_without_exclude_head_a_maskable_classifier_is_masked_and_redrawn(tiny_dataset):
    trainer, head = head_trainer(tiny_dataset, {}, {})
    assert "classifier.weight" in trainer.masker.masks()
    weight = trainer.backbone.get_classifier().weight
    assert not torch.equal(weight.detach(), head["weight"])
    assert torch.all(weight == (2 / 8) ** 0.5)


def test_learn_head_meta_learns_the_head_at_its_own_rate(tiny_dataset):
    trainer, head = head_trainer(
        tiny_dataset,
        {"exclude_head": True, "weight_init": "kaiming_normal"},
        {"learn_head": True, "head_lr": 0.05, "lr": 2.0, "schedule": "constant"},
        mask_head=False,
    )
    names = set(trainer.meta_params)
    assert {"classifier.weight", "classifier.bias"} <= names
    assert names - {"classifier.weight", "classifier.bias"} == set(trainer.masker.meta_parameters())
    rates = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert rates == pytest.approx([0.05, 2.0])
    body = {n: p.detach().clone() for n, p in trainer.backbone.named_parameters()}
    trainer.fit()
    for name, p in trainer.backbone.get_classifier().named_parameters():
        assert not torch.equal(p.detach(), head[name]), f"head {name} was not meta-learned"
    for name, p in trainer.backbone.named_parameters():
        if not name.startswith("classifier."):
            assert torch.equal(p.detach(), body[name]), f"{name} must stay fixed"


def test_learn_head_refuses_a_masked_head(tiny_dataset):
    with pytest.raises(fewmask.ConfigError, match="exclude_head"):
        head_trainer(tiny_dataset, {}, {"learn_head": True})


def test_learn_head_resumes_to_the_uninterrupted_run(tiny_dataset, tmp_path):
    """The head's optimizer group (its rate and momentum) survives a checkpoint."""

    def build(run_dir):
        torch.manual_seed(0)
        backbone = create(
            "backbone", "omniglot_mlp", {"hidden": [16, 8]}, input_shape=(1, 28, 28), num_classes=5
        )
        return Trainer(
            backbone,
            create("masker", "metaticket"),
            create("inner_optimizer", "sgd"),
            create("objective", "metaticket", {"warmup": 1, "learn_head": True, "head_lr": 0.1}),
            create("sampler", "episodic", {"ways": 5, "shots": 1}),
            {"train": tiny_dataset},
            TrainConfig(iterations=4, test_episodes=2, checkpoint_every=2, progress=False),
            seed=2,
            run_dir=run_dir,
        )

    whole = build(tmp_path / "whole")
    whole.fit()
    cut = build(tmp_path / "cut")
    cut.train_step()
    cut.train_step()
    cut.save()
    resumed = build(tmp_path / "cut")
    resumed.resume()
    assert resumed.iteration == 2
    resumed.fit()
    for (name, a), b in zip(whole.backbone.named_parameters(), resumed.backbone.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
