"""Meta-gradients of MAML and Meta-ticket against a plain per-task reference and finite differences.

Float64, a tiny MLP with BatchNorm (batch statistics), two second-order inner steps.
The reference (``fewmask.testing.reference_meta_loss``) is written out by hand (explicit
linear / batch_norm / relu), independent of the engine's functional_call path. For
Meta-ticket the straight-through estimator makes the score gradient equal to the gradient
w.r.t. a *continuous* mask at the current binary mask, so the finite differences perturb the
mask values.
"""

from __future__ import annotations

import pytest
import torch

from fewmask import Engine, create
from fewmask.engine.exact import adapt
from fewmask.interfaces import Episode
from fewmask.testing import reference_meta_loss

SHAPE, HIDDEN, WAYS, LR, STEPS = (1, 2, 3), (5, 4), 3, 0.4, 2


def episodes(count: int = 2) -> list[Episode]:
    g = torch.Generator().manual_seed(7)

    def split(n):
        return torch.randn(n * WAYS, *SHAPE, generator=g, dtype=torch.float64)

    labels = torch.arange(WAYS)
    return [
        Episode(split(2), labels.repeat_interleave(2), split(3), labels.repeat_interleave(3))
        for _ in range(count)
    ]


def reference_loss(params, masks, eps, first_order=False):
    """The plain per-task reference with every learning rate equal to LR."""
    return reference_meta_loss(params, masks, eps, dict.fromkeys(params, LR), STEPS, first_order)


def build(masker_name, first_order=False, init_sparsity=0.5) -> Engine:
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": list(HIDDEN)}, input_shape=SHAPE, num_classes=WAYS
    )
    options = {"init_sparsity": init_sparsity} if masker_name == "metaticket" else None
    masker = create("masker", masker_name, options)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": STEPS, "first_order": first_order})
    objective = create("objective", "metaticket" if masker_name == "metaticket" else "maml")
    return Engine(backbone, masker, inner, objective)


def assert_equals_reference(got: dict, loss: torch.Tensor, wrt: dict) -> None:
    """``got`` is the gradient of the reference ``loss`` w.r.t. ``wrt``, to 1e-10."""
    want = torch.autograd.grad(loss, list(wrt.values()))
    assert got.keys() == wrt.keys()
    for name, expected in zip(wrt, want):
        torch.testing.assert_close(got[name], expected, rtol=1e-10, atol=1e-12)


def directional_fd(fn, point: dict, direction: dict, h=1e-6) -> float:
    plus = {n: point[n] + h * direction[n] for n in point}
    minus = {n: point[n] - h * direction[n] for n in point}
    return ((fn(plus) - fn(minus)) / (2 * h)).item()


def assert_agrees_with_finite_differences(fn, point: dict, grads: dict, seed: int) -> None:
    """``grads`` . v equals the central difference of ``fn`` along 3 random directions v."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        direction = {n: torch.randn(t.shape, generator=g, dtype=t.dtype) for n, t in point.items()}
        fd = directional_fd(fn, point, direction)
        analytic = sum((grads[n] * direction[n]).sum() for n in grads).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_reference_and_finite_differences(first_order):
    engine = build("dense", first_order)
    eps = episodes()
    got = engine.meta_step(eps).grads
    assert all(p.grad is None for p in engine.backbone.parameters()), "no .grad is touched"

    params = {n: p.detach().clone().requires_grad_() for n, p in engine.meta_params.items()}
    assert_equals_reference(got, reference_loss(params, None, eps, first_order), params)

    if not first_order:  # the first-order gradient is not the derivative of the loss
        assert_agrees_with_finite_differences(
            lambda p: reference_loss(p, None, eps), params, got, seed=3
        )


def test_metaticket_score_gradient_matches_reference_and_finite_differences():
    pytest.importorskip("fewmask_plugin_metaticket")
    engine = build("metaticket")
    eps = episodes()
    got = engine.meta_step(eps).grads

    params = {n: p.detach().clone().requires_grad_() for n, p in engine.backbone.named_parameters()}
    with torch.no_grad():
        binary = {n: m.detach().clone() for n, m in engine.masker.masks().items()}
    assert any((m == 0).any() for m in binary.values()), "test needs some pruned entries"
    masks = {n: m.clone().requires_grad_() for n, m in binary.items()}
    assert_equals_reference(got, reference_loss(params, masks, eps), masks)
    for name, grad in got.items():
        assert grad[binary[name] == 0].abs().sum() > 0, "pruned entries get score gradients"

    assert_agrees_with_finite_differences(
        lambda m: reference_loss(params, m, eps), binary, got, seed=5
    )


def test_metaticket_inner_loop_never_moves_pruned_weights():
    pytest.importorskip("fewmask_plugin_metaticket")
    engine = build("metaticket")
    masks = engine.masker.masks()
    params = dict(engine.backbone.named_parameters())
    fast = adapt(
        engine.backbone,
        engine.inner,
        engine.objective,
        params,
        masks,
        episodes(1)[0],
        training=False,
    )
    for name, mask in masks.items():
        moved = (fast[name] - params[name]).detach() != 0
        assert not moved[mask.detach() == 0].any()
        assert moved[mask.detach() == 1].any()
