"""Inner learning-rate policies: entry point, frozen groups, Meta-ticket+BOIL meta-gradient."""

from __future__ import annotations

import pytest
import torch

from fewmask import Engine, Episode, create, load_registry
from fewmask.testing import adapt, reference_meta_loss

SHAPE, WAYS = (1, 2, 3), 3


def test_plugin_is_found_through_its_entry_point():
    registry = load_registry(autoload=False, only=["lrpolicies"], strict=True)
    for name in ("anil", "boil", "per_layer"):
        info = registry.get("inner_optimizer", name)
        assert info.provider.distribution == "fewmask-plugin-lrpolicies"
    assert "maml" not in registry.names("inner_optimizer"), "MAML's policy is the built-in sgd"


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
    inner.attach(backbone)
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


@pytest.mark.parametrize("policy, frozen", [("boil", "head"), ("anil", "body"), ("sgd", None)])
@pytest.mark.parametrize("masker", ["dense", "metaticket"])
def test_frozen_group_never_moves_in_the_inner_loop(policy, frozen, masker):
    backbone, masker_obj, inner = tiny(masker, policy)
    params = dict(backbone.named_parameters())
    objective = create("objective", "maml")
    masks = masker_obj.masks()
    fast = adapt(backbone, inner, objective, params, masks, episode(), training=False)
    groups = backbone.parameter_groups()
    for name, group in groups.items():
        moved = not torch.equal(fast[name], params[name])
        assert moved == (group != frozen), (name, group)


def test_per_layer_rates_by_pattern_and_group():
    _, _, inner = tiny(inner="per_layer", options={"rates": {"head": 0.0, "features.1.*": 0.1}})
    lrs = inner.rates
    assert lrs["classifier.weight"] == 0.0 and lrs["classifier.bias"] == 0.0
    assert lrs["features.1.linear.weight"] == 0.1 and lrs["features.1.normalize.bias"] == 0.1
    assert lrs["features.2.linear.weight"] == 0.4


@pytest.mark.parametrize("policy", ["boil", "anil"])
def test_metaticket_with_policy_meta_gradient_equals_per_task_reference(policy):
    backbone, masker, inner = tiny("metaticket", policy)
    engine = Engine(backbone, masker, inner, create("objective", "metaticket"))
    episodes = [episode(1), episode(2)]
    lrs = inner.plain_sgd(training=True).rates
    grads = engine.meta_step(episodes).grads
    params = {n: p.detach().clone().requires_grad_() for n, p in backbone.named_parameters()}
    masks = {n: m.detach().clone().requires_grad_() for n, m in masker.masks().items()}
    loss = reference_meta_loss(params, masks, episodes, lrs, steps=2)
    want = torch.autograd.grad(loss, list(masks.values()))
    for name, expected in zip(masks, want):
        torch.testing.assert_close(grads[name], expected, rtol=1e-10, atol=1e-12)
    assert any(lr == 0 for lr in lrs.values()) and any(lr > 0 for lr in lrs.values())
