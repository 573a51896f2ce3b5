"""Inner learning-rate policies: entry point, frozen groups, Meta-ticket+BOIL meta-gradient."""

from __future__ import annotations

import pytest
import torch

from fewmask import create
from fewmask.engine import adapt, meta_gradient
from fewmask.interfaces import Episode
from fewmask.plugins import load_registry
from fewmask.testing import reference_meta_loss

SHAPE, WAYS = (1, 2, 3), 3


def test_plugin_is_found_through_its_entry_point():
    registry = load_registry(autoload=False, only=["lrpolicies"], strict=True)
    for name in ("maml", "anil", "boil", "per_layer"):
        info = registry.get("inner_optimizer", name)
        assert info.provider.distribution == "fewmask-plugin-lrpolicies"


def tiny(masker="dense", inner="boil", options=None):
    torch.manual_seed(0)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [5, 4]}, input_shape=SHAPE, num_classes=WAYS
    )
    masker = create("masker", masker, {"init_sparsity": 0.5} if masker == "metaticket" else None)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", inner, {"lr": 0.4, "steps": 2, **(options or {})})
    return backbone, masker, inner


def episode(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return Episode(
        torch.randn(2 * WAYS, *SHAPE, generator=g, dtype=torch.float64),
        labels.repeat_interleave(2),
        torch.randn(3 * WAYS, *SHAPE, generator=g, dtype=torch.float64),
        labels.repeat_interleave(3),
    )


@pytest.mark.parametrize("policy, frozen", [("boil", "head"), ("anil", "body"), ("maml", None)])
@pytest.mark.parametrize("masker", ["dense", "metaticket"])
def test_frozen_group_never_moves_in_the_inner_loop(policy, frozen, masker):
    backbone, masker_obj, inner = tiny(masker, policy)
    lrs = inner.learning_rates(backbone)
    params = dict(backbone.named_parameters())
    fast = adapt(backbone, inner, params, masker_obj.masks(), episode(), lrs, 2, False)
    groups = backbone.parameter_groups()
    for name, group in groups.items():
        moved = not torch.equal(fast[name], params[name])
        assert moved == (group != frozen), (name, group)


def test_per_layer_rates_by_pattern_and_group():
    backbone, _, inner = tiny(
        inner="per_layer", options={"rates": {"head": 0.0, "features.1.*": 0.1}}
    )
    lrs = inner.learning_rates(backbone)
    assert lrs["classifier.weight"] == 0.0 and lrs["classifier.bias"] == 0.0
    assert lrs["features.1.linear.weight"] == 0.1 and lrs["features.1.normalize.bias"] == 0.1
    assert lrs["features.2.linear.weight"] == 0.4


@pytest.mark.parametrize("policy", ["boil", "anil"])
def test_metaticket_with_policy_meta_gradient_equals_per_task_reference(policy):
    backbone, masker, inner = tiny("metaticket", policy)
    scores = masker.meta_parameters()
    episodes = [episode(1), episode(2)]
    lrs = inner.learning_rates(backbone)
    meta_gradient(backbone, masker, inner, scores, episodes, lrs)
    params = {n: p.detach().clone().requires_grad_() for n, p in backbone.named_parameters()}
    masks = {n: m.detach().clone().requires_grad_() for n, m in masker.masks().items()}
    loss = reference_meta_loss(params, masks, episodes, lrs, steps=2)
    want = torch.autograd.grad(loss, list(masks.values()))
    for score, expected in zip(scores.values(), want):
        torch.testing.assert_close(score.grad, expected, rtol=1e-10, atol=1e-12)
    assert any(lr == 0 for lr in lrs.values()) and any(lr > 0 for lr in lrs.values())
