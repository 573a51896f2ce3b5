"""Contract tests driven by the registry: every registered component honours its interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewmask import create, default_registry
from fewmask.engine.exact import adapt, masked_forward
from fewmask.interfaces import Episode
from fewmask.testing import make_dataset

# Options that make a paper-size backbone CPU-test sized; input shapes it accepts.
SMALL = {
    "mlp5": {"width": 0.02},
    "resnet12": {"channels": [4, 4, 4, 4]},
    "wrn28_10": {"depth": 10, "widen_factor": 1},
}
SHAPES = {"timm": (3, 32, 32)}


def names(kind: str) -> list[str]:
    return default_registry().names(kind)


def small_backbone(name: str, num_classes: int = 5):
    shape = SHAPES.get(name, (1, 28, 28))
    torch.manual_seed(0)
    return create(
        "backbone", name, SMALL.get(name, {}), input_shape=shape, num_classes=num_classes
    ), shape


def episode(shape, ways=5, shots=2, queries=2):
    data = make_dataset(classes=ways, per_class=shots + queries, shape=shape)
    sampler = create("sampler", "episodic", {"ways": ways, "shots": shots, "queries": queries})
    return sampler.sample(data, torch.Generator().manual_seed(0)).to("cpu")


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone_contract(name):
    backbone, shape = small_backbone(name)
    x = torch.rand(4, *shape)
    logits = backbone(x)
    assert logits.shape == (4, 5)
    torch.testing.assert_close(backbone.forward_head(backbone.forward_features(x)), logits)
    params = dict(backbone.named_parameters())
    groups = backbone.parameter_groups()
    assert set(groups) == set(params) and "head" in groups.values() and "body" in groups.values()
    maskable = backbone.maskable_parameter_names()
    assert maskable and set(maskable) <= set(params)
    for n in maskable:
        assert groups[n] == "body", f"{n}: the head is never masked"
        assert params[n].dim() >= 2, f"{n}: biases and norms are never masked"
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            assert not module.track_running_stats, "BatchNorm must use batch statistics"


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone_head_protocol(name):
    """timm's head methods: pre_logits is the classifier's input; reset_classifier resizes."""
    backbone, shape = small_backbone(name)
    backbone.double()
    x = torch.rand(4, *shape, dtype=torch.float64)
    logits = backbone(x)
    pre_logits = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    assert pre_logits.shape == (4, backbone.num_features)
    classifier = backbone.get_classifier()
    torch.testing.assert_close(classifier(pre_logits), logits)

    backbone.reset_classifier(3)
    head = backbone.get_classifier()
    assert head is not classifier
    assert all(p.dtype == torch.float64 for p in head.parameters()), "keeps the dtype"
    assert backbone(x).shape == (4, 3)
    assert torch.equal(backbone.forward_head(backbone.forward_features(x), True), pre_logits)
    assert torch.equal(head(pre_logits), backbone(x))
    groups = backbone.parameter_groups()
    head_names = {n for n, g in groups.items() if g == "head"}
    assert {id(backbone.get_parameter(n)) for n in head_names} == {id(p) for p in head.parameters()}
    assert set(backbone.maskable_parameter_names()) <= {n for n, g in groups.items() if g == "body"}


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone_options_check_runs_at_validation(name):
    """Default options pass the config's own checks (which `fewmask validate` runs)."""
    config_cls = default_registry().get("backbone", name).config_cls
    check = getattr(config_cls, "check", None)
    if config_cls is not None and check is not None:
        assert check(config_cls()) == {}


@pytest.mark.parametrize("name", names("backbone"))
def test_backbone_second_order_step(name):
    backbone, shape = small_backbone(name)
    ep = episode(shape)
    params = dict(backbone.named_parameters())
    inner = create("inner_optimizer", "sgd", {"lr": 0.1})
    inner.attach(backbone)
    objective = create("objective", "maml")
    fast = adapt(backbone, inner, objective, params, {}, ep, training=True)
    loss = F.cross_entropy(masked_forward(backbone, fast, {}, ep.query_x), ep.query_y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", names("masker"))
def test_masker_contract(name):
    backbone, _ = small_backbone("omniglot_mlp")
    masker = create("masker", name)
    masker.attach(backbone)
    masks = masker.masks()
    maskable = set(backbone.maskable_parameter_names())
    assert set(masks) <= maskable and set(masker.meta_parameters()) <= maskable
    for n, m in masks.items():
        assert m.shape == backbone.get_parameter(n).shape
        assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    twin, _ = small_backbone("omniglot_mlp")
    torch.manual_seed(123)
    copy = create("masker", name)
    copy.attach(twin)
    copy.load_state_dict(masker.state_dict())
    for n, m in copy.masks().items():
        assert torch.equal(m.detach(), masks[n].detach()), "state_dict restores the masks"


@pytest.mark.parametrize("name", names("inner_optimizer"))
def test_inner_optimizer_contract(name):
    backbone, shape = small_backbone("omniglot_mlp")
    inner = create("inner_optimizer", name)
    inner.attach(backbone)
    params = dict(backbone.named_parameters())
    objective = create("objective", "maml")
    for training in (True, False):
        fast = adapt(backbone, inner, objective, params, {}, episode(shape), training=training)
        assert set(fast) == set(params)
        assert any(not torch.equal(fast[n], p) for n, p in params.items()), "it adapts"
        plan = inner.plain_sgd(training=training)
        if plan is not None:  # a claim of plain SGD steps must be one
            assert set(plan.rates) == set(params) and plan.steps >= 1
            assert all(lr >= 0 for lr in plan.rates.values())
            assert plan.create_graph == (training and plan.create_graph)


@pytest.mark.parametrize("name", names("objective"))
def test_objective_contract(name):
    backbone, _ = small_backbone("omniglot_mlp")
    masker = create("masker", default_registry().get("objective", name).cls.default_masker)
    masker.attach(backbone)
    objective = create("objective", name)
    meta = objective.meta_parameters(backbone, masker)
    assert meta and all(p.requires_grad for p in meta.values())
    optimizer = objective.build_optimizer(list(meta.values()))
    assert isinstance(optimizer, torch.optim.Optimizer)
    scheduler = objective.build_scheduler(optimizer, 100)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert all(r > 0 for r in rates)
    logits, labels = torch.randn(6, 3, requires_grad=True), torch.arange(3).repeat(2)
    for loss in (objective.support_loss(logits, labels), objective.query_loss(logits, labels)):
        assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    metrics = objective.metrics(logits, labels)
    assert "accuracy" in metrics and all(v.dim() == 0 for v in metrics.values())


@pytest.mark.parametrize("name", names("sampler"))
def test_sampler_contract(name):
    data = make_dataset(classes=6, per_class=5)
    sampler = create("sampler", name)
    sampler.check(data)
    ep = sampler.sample(data, torch.Generator().manual_seed(0))
    assert isinstance(ep, Episode)
    assert ep.support_x.shape[0] == sampler.ways * sampler.shots
    assert ep.query_x.shape[0] == sampler.ways * sampler.queries
    assert set(ep.support_y.tolist()) == set(range(sampler.ways))
