"""Every optional engine path against a plain per-task loop, in float64, with BatchNorm.

The loop below is independent of ``fewmask.engine`` (functional_call, per-task masks, plain
``p - lr * g``); each :class:`EngineOptions` lever, alone and all together, must give the same
meta-gradient to 1e-10 relative for MAML and Meta-ticket with the sgd, BOIL and ANIL inner
optimizers, on an MLP (BatchNorm1d) and Conv4 / ResNet-12 (BatchNorm2d), two inner steps.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import fewmask.batchnorm
from fewmask import create
from fewmask.batchnorm import batch_norm_train, fused_batchnorm
from fewmask.engine import EngineOptions, meta_gradient
from fewmask.interfaces import Episode, Masker

WAYS, LR, STEPS = 3, 0.4, 2
MODELS = {
    "omniglot_mlp": ({"hidden": [6, 5]}, (1, 3, 3)),
    "conv4": ({"channels": 3}, (2, 16, 16)),
    "resnet12": ({"channels": [2, 3, 3, 4]}, (2, 16, 16)),
}
PATHS = {
    "fused_sgd": EngineOptions(fused_sgd=True),
    "fused_batchnorm": EngineOptions(fused_batchnorm=True),
    "channels_last": EngineOptions(fused_batchnorm=True, channels_last=True),
    "fast": EngineOptions.fast(),
}


@pytest.fixture(autouse=True)
def fused_batchnorm_on_tiny_inputs(monkeypatch):
    """The test models are far below the size at which the fused BatchNorm is used."""
    monkeypatch.setattr(fewmask.batchnorm, "MIN_NUMEL", 0)


def episodes(shape, count=2) -> list[Episode]:
    g = torch.Generator().manual_seed(11)
    labels = torch.arange(WAYS)

    def images(n):
        return torch.randn(n * WAYS, *shape, generator=g, dtype=torch.float64)

    return [
        Episode(images(2), labels.repeat_interleave(2), images(3), labels.repeat_interleave(3))
        for _ in range(count)
    ]


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
    meta = dict(backbone.named_parameters()) if algorithm == "maml" else masker.meta_parameters()
    return backbone, masker, inner, meta, episodes(shape)


def loop_gradient(backbone, masker, inner, meta, eps) -> list[torch.Tensor]:
    """Mean query loss gradient, one task at a time, written without the engine."""
    rates = inner.learning_rates(backbone)
    targets = list(meta.values())
    total = [torch.zeros_like(t) for t in targets]
    for ep in eps:
        masks = masker.masks()

        def loss(params, x, y, masks=masks):
            masked = {n: p * masks[n] if n in masks else p for n, p in params.items()}
            return F.cross_entropy(functional_call(backbone, masked, (x,)), y)

        fast = dict(backbone.named_parameters())
        names = [n for n in fast if rates[n] != 0]
        for _ in range(STEPS):
            grads = torch.autograd.grad(
                loss(fast, ep.support_x, ep.support_y),
                [fast[n] for n in names],
                create_graph=not inner.first_order,
            )
            fast = {**fast, **{n: fast[n] - rates[n] * g for n, g in zip(names, grads)}}
        query = loss(fast, ep.query_x, ep.query_y) / len(eps)
        for acc, g in zip(total, torch.autograd.grad(query, targets, allow_unused=True)):
            if g is not None:
                acc += g
    return total


def engine_gradient(backbone, masker, inner, meta, eps, options) -> list[torch.Tensor]:
    for p in meta.values():
        p.grad = None
    meta_gradient(backbone, masker, inner, meta, eps, inner.learning_rates(backbone), options)
    return [p.grad.clone() for p in meta.values()]


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


def test_fast_path_accumulates_into_existing_grads():
    backbone, masker, inner, meta, eps = build("conv4", "metaticket", "sgd")
    want = loop_gradient(backbone, masker, inner, meta, eps)
    for p in meta.values():
        p.grad = torch.ones_like(p)
    lrs = inner.learning_rates(backbone)
    meta_gradient(backbone, masker, inner, meta, eps, lrs, EngineOptions.fast())
    assert_same([p.grad - 1 for p in meta.values()], want)


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
    monkeypatch.setattr(fewmask.batchnorm, "MIN_NUMEL", 33)
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
