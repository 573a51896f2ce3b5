"""Every optional engine path against a plain per-task loop, in float64, with BatchNorm.

The loop (``fewmask.testing.reference_meta_gradient``) is independent of ``fewmask.engine``
(functional_call, per-task masks, plain ``p - lr * g``); each :class:`EngineOptions` lever,
alone and all together, must give the same meta-gradient to 1e-10 relative for MAML and
Meta-ticket with the sgd, BOIL and ANIL inner optimizers, on an MLP (BatchNorm1d) and Conv4 /
ResNet-12 (BatchNorm2d), two inner steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fewmask.engine.batchnorm
from fewmask import Engine, EngineOptions, create
from fewmask.engine.batchnorm import batch_norm_train, fused_batchnorm
from fewmask.interfaces import Episode, InnerOptimizer, Masker, MetaObjective
from fewmask.testing import (
    ENGINE_PATHS,
    functional_forward,
    random_episodes,
    reference_meta_gradient,
)

WAYS, LR, STEPS = 3, 0.4, 2
MODELS = {
    "omniglot_mlp": ({"hidden": [6, 5]}, (1, 3, 3)),
    "conv4": ({"channels": 3}, (2, 16, 16)),
    "resnet12": ({"channels": [2, 3, 3, 4]}, (2, 16, 16)),
}
PATHS = {name: options for name, options in ENGINE_PATHS.items() if options is not None}
pytestmark = pytest.mark.usefixtures("fused_batchnorm_on_tiny_inputs")


def episodes(shape, count=2) -> list[Episode]:
    g = torch.Generator().manual_seed(11)
    return random_episodes(count, WAYS, 2, 3, shape, g, dtype=torch.float64)


def build(model, algorithm, inner_name, first_order=False):
    if algorithm == "metaticket" or inner_name != "sgd":
        pytest.importorskip(
            "fewmask_plugin_metaticket"
            if algorithm == "metaticket"
            else "fewmask_plugin_lrpolicies"
        )
    options, shape = MODELS[model]
    torch.manual_seed(3)
    backbone = create("backbone", model, options, input_shape=shape, num_classes=WAYS)
    masker = create(
        "masker",
        algorithm if algorithm == "metaticket" else "dense",
        {"init_sparsity": 0.5} if algorithm == "metaticket" else None,
    )
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create(
        "inner_optimizer", inner_name, {"lr": LR, "steps": STEPS, "first_order": first_order}
    )
    inner.attach(backbone)
    meta = dict(backbone.named_parameters()) if algorithm == "maml" else masker.meta_parameters()
    return backbone, masker, inner, meta, episodes(shape)


class Targets(MetaObjective):
    """The default losses and metrics, meta-learning the given tensors."""

    def __init__(self, meta):
        self.meta = meta

    def meta_parameters(self, backbone, masker):
        return self.meta

    def build_optimizer(self, params):
        return torch.optim.SGD(params, lr=1.0)

    def build_scheduler(self, optimizer, total_iterations):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)


def loop_gradient(backbone, masker, inner, meta, eps) -> list[torch.Tensor]:
    """Mean query loss gradient, one task at a time, written without the engine."""
    plan = inner.plain_sgd(training=True)
    return reference_meta_gradient(
        functional_forward(backbone),
        dict(backbone.named_parameters()),
        masker.masks,
        eps,
        plan.rates,
        plan.steps,
        list(meta.values()),
        first_order=not plan.create_graph,
    )


def engine_gradient(backbone, masker, inner, meta, eps, options) -> list[torch.Tensor]:
    grads = Engine(backbone, masker, inner, Targets(meta), options).meta_step(eps).grads
    return [grads.get(n, torch.zeros_like(p)) for n, p in meta.items()]


def assert_same(got, want, rtol=1e-10):
    got, want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    assert ((got - want).norm() / want.norm()).item() < rtol


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("inner_name", ["sgd", "boil", "anil"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", ["omniglot_mlp", "conv4"])
def test_engine_path_matches_per_task_loop(model, algorithm, inner_name, path):
    backbone, masker, inner, meta, eps = build(model, algorithm, inner_name)
    want = loop_gradient(backbone, masker, inner, meta, eps)
    assert_same(engine_gradient(backbone, masker, inner, meta, eps, PATHS[path]), want)


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_fast_path_on_resnet12_matches_loop(algorithm):
    backbone, masker, inner, meta, eps = build("resnet12", algorithm, "sgd")
    want = loop_gradient(backbone, masker, inner, meta, eps)
    assert_same(engine_gradient(backbone, masker, inner, meta, eps, PATHS["fast"]), want)


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_fast_path_first_order_matches_loop(algorithm):
    backbone, masker, inner, meta, eps = build("conv4", algorithm, "sgd", first_order=True)
    want = loop_gradient(backbone, masker, inner, meta, eps)
    assert_same(engine_gradient(backbone, masker, inner, meta, eps, PATHS["fast"]), want)


class SoftMasker(Masker):
    """Masks ``sigmoid(scores)`` (not binary), or fixed random binary masks (``frozen``)."""

    def __init__(self, frozen: bool):
        super().__init__()
        self.frozen, self.names, self.scores = frozen, [], nn.ParameterDict()

    def attach(self, backbone):
        for name in backbone.maskable_parameter_names():
            self.names.append(name)
            score = torch.randn_like(backbone.get_parameter(name))
            self.scores[name.replace(".", "/")] = nn.Parameter(score, not self.frozen)

    def masks(self):
        scores = [self.scores[n.replace(".", "/")] for n in self.names]
        return {
            n: (s > 0).to(s.dtype) if self.frozen else s.sigmoid()
            for n, s in zip(self.names, scores)
        }

    def meta_parameters(self):
        return {} if self.frozen else {n: self.scores[n.replace(".", "/")] for n in self.names}


@pytest.mark.parametrize("path", ["fused_sgd", "fast"])
@pytest.mark.parametrize("frozen", [False, True], ids=["soft", "frozen"])
@pytest.mark.parametrize("model", ["omniglot_mlp", "conv4"])
def test_engine_path_with_soft_or_frozen_masks(model, frozen, path):
    backbone, _, inner, _, eps = build(model, "maml", "sgd")
    masker = SoftMasker(frozen)
    masker.attach(backbone)
    masker.double()
    meta = dict(backbone.named_parameters()) if frozen else masker.meta_parameters()
    want = loop_gradient(backbone, masker, inner, meta, eps)
    assert_same(engine_gradient(backbone, masker, inner, meta, eps, PATHS[path]), want)


@pytest.mark.parametrize("path", ["exact", "fast"])
def test_meta_step_leaves_grad_alone_and_returns_loss_and_metrics(path):
    backbone, masker, inner, meta, eps = build("conv4", "metaticket", "sgd")
    want = loop_gradient(backbone, masker, inner, meta, eps)
    for p in meta.values():
        p.grad = torch.ones_like(p)
    options = EngineOptions.fast() if path == "fast" else None
    result = Engine(backbone, masker, inner, Targets(meta), options).meta_step(eps)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in meta.values())
    assert_same([result.grads[n] for n in meta], want)
    assert result.loss.dim() == 0 and result.loss > 0
    assert set(result.metrics) == {"accuracy"} and 0 <= result.metrics["accuracy"] <= 1


def test_uint8_and_float_episodes_give_the_same_step():
    backbone, masker, inner, meta, _ = build("conv4", "metaticket", "sgd")
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(WAYS).repeat(2)
    images = torch.randint(0, 256, (2 * WAYS, *MODELS["conv4"][1]), generator=g, dtype=torch.uint8)
    as_uint8 = [Episode(images, labels, images, labels)]
    as_float = [episode.to("cpu", torch.float64) for episode in as_uint8]
    engine = Engine(backbone, masker, inner, Targets(meta))
    a, b = engine.meta_step(as_uint8), engine.meta_step(as_float)
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(a.grads[n], b.grads[n]) for n in meta)
    loss, metrics = engine.evaluate(as_float[0])
    assert loss.dim() == 0 and set(metrics) == {"accuracy"}


class SmoothedObjective(Targets):
    """Label-smoothed query loss: the engine must use the objective's loss, on every path."""

    def query_loss(self, logits, labels):
        return F.cross_entropy(logits, labels, label_smoothing=0.2)


@pytest.mark.parametrize("path", ["exact", "fast"])
def test_engine_uses_the_objective_query_loss(path):
    backbone, masker, inner, meta, eps = build("omniglot_mlp", "maml", "sgd")
    options = EngineOptions.fast() if path == "fast" else None
    smoothed = Engine(backbone, masker, inner, SmoothedObjective(meta), options).meta_step(eps)
    plain = Engine(backbone, masker, inner, Targets(meta), options).meta_step(eps)
    assert not torch.isclose(smoothed.loss, plain.loss)
    params = {n: p.detach().clone().requires_grad_() for n, p in meta.items()}
    total = 0.0
    for ep in eps:  # the reference loop with the smoothed query loss, by hand
        fast = dict(params)
        for _ in range(STEPS):
            support = F.cross_entropy(
                functional_forward(backbone)(fast, None, ep.support_x), ep.support_y
            )
            grads = torch.autograd.grad(support, list(fast.values()), create_graph=True)
            fast = {n: p - LR * g for (n, p), g in zip(fast.items(), grads)}
        logits = functional_forward(backbone)(fast, None, ep.query_x)
        total = total + F.cross_entropy(logits, ep.query_y, label_smoothing=0.2)
    want = torch.autograd.grad(total / len(eps), list(params.values()))
    assert_same([smoothed.grads[n] for n in meta], want)


class ProbeLike(InnerOptimizer):
    """A wrapper that keeps plain_sgd's default: the engine must call its adapt() per task."""

    def __init__(self, base):
        self.base, self.calls = base, 0

    def attach(self, backbone):
        self.base.attach(backbone)

    def adapt(self, params, support_loss, *, training):
        self.calls += 1
        return self.base.adapt(params, support_loss, training=training)


def test_fused_path_is_used_only_for_inner_optimizers_that_declare_plain_sgd():
    backbone, masker, inner, meta, eps = build("conv4", "metaticket", "sgd")
    assert inner.plain_sgd(training=True) is not None
    wrapper = ProbeLike(inner)
    assert wrapper.plain_sgd(training=True) is None
    want = loop_gradient(backbone, masker, inner, meta, eps)
    got = Engine(backbone, masker, wrapper, Targets(meta), EngineOptions.fast()).meta_step(eps)
    assert wrapper.calls == len(eps)
    assert_same([got.grads[n] for n in meta], want)


@pytest.mark.parametrize("shape", [(7, 3), (5, 3, 4, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_second_derivatives(shape, affine):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = (
        [torch.randn(shape[1], dtype=torch.float64, requires_grad=True) for _ in range(2)]
        if affine
        else []
    )
    inputs = (x, *params)

    def fused(x, *p):
        return batch_norm_train(x, *(p or (None, None)), 1e-3)

    def native(x, *p):
        return F.batch_norm(x, None, None, *(p or (None, None)), training=True, eps=1e-3)

    assert torch.autograd.gradgradcheck(fused, inputs)
    grad_y = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (fused, native):
        grads = torch.autograd.grad(fn(*inputs), inputs, grad_y, create_graph=True)
        outer = sum((g.sin() * (i + 1)).sum() for i, g in enumerate(grads))
        results.append(
            torch.autograd.grad(outer, (*inputs, grad_y), allow_unused=True, materialize_grads=True)
        )
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_batchnorm_leaves_running_statistics_and_small_calls_alone(monkeypatch):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(4)
    x = torch.randn(8, 4)
    with fused_batchnorm():
        y = bn(x)
    assert y.grad_fn.name() == "NativeBatchNormBackward0"
    assert not torch.equal(bn.running_mean, torch.zeros(4))
    plain = torch.nn.BatchNorm1d(4, track_running_stats=False)
    with fused_batchnorm():
        assert plain(x).grad_fn.name() == "_BatchNormFnBackward"
    monkeypatch.setattr(fewmask.engine.batchnorm, "MIN_NUMEL", 33)
    image = torch.nn.BatchNorm2d(4, track_running_stats=False)
    channels_last = torch.randn(2, 4, 2, 2).contiguous(memory_format=torch.channels_last)
    with fused_batchnorm():
        assert plain(x).grad_fn.name() == "NativeBatchNormBackward0"
        assert image(channels_last).grad_fn.name() == "_BatchNormFnBackward"  # always precise


def test_channels_last_batch_norm_keeps_float32_precision():
    """torch 2.14's channels-last CPU kernel is 1.3e-5 off here (NCHW: 2e-7)."""
    torch.manual_seed(0)
    x64 = torch.randn(32, 4, 64, 64, dtype=torch.float64) + 5
    want = F.batch_norm(x64, None, None, training=True)
    x = x64.float().contiguous(memory_format=torch.channels_last)
    got = batch_norm_train(x, None, None)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_channels_last_needs_fused_batchnorm():
    with pytest.raises(ValueError, match="fused_batchnorm"):
        EngineOptions(channels_last=True)
