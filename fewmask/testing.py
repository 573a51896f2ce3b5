"""Test helpers for fewmask and its plugins; opt in with ``pytest_plugins = ["fewmask.testing"]``.

fewmask's own suite loads it with ``-p fewmask.testing``. Fixtures: ``tiny_dataset`` (random
uint8 images, 8 classes x 6), ``registry`` (a fresh registry, strict plugin loading).
"""

from __future__ import annotations

import pytest
import torch

from fewmask.interfaces import FewShotDataset
from fewmask.plugins import load_registry
from fewmask.registry import Registry


def make_dataset(
    classes: int = 8,
    per_class: int = 6,
    shape: tuple[int, ...] = (1, 28, 28),
    seed: int = 0,
    name: str = "tiny",
) -> FewShotDataset:
    """Random uint8 images, ``per_class`` per class, sorted by class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (classes * per_class, *shape), generator=generator, dtype=torch.uint8
    )
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotDataset(images, labels, tuple(f"c{i}" for i in range(classes)), name)


@pytest.fixture
def tiny_dataset() -> FewShotDataset:
    return make_dataset()


@pytest.fixture
def registry() -> Registry:
    return load_registry(strict=True)


@pytest.fixture(autouse=True)
def _fresh_seed_and_registry():
    """Every test starts from torch seed 0, one thread (tiny nets run faster on one, and the
    project's 2-core machines are shared), and a registry that is reloaded on first use."""
    from fewmask.plugins import reset_default_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reset_default_registry()
    yield
    reset_default_registry()
    torch.set_num_threads(threads)


def _hypothesis_profiles() -> None:
    import os

    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is a test extra
        return
    settings.register_profile(
        "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("thorough", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()


def reference_mlp_forward(params: dict, masks: dict | None, x: torch.Tensor) -> torch.Tensor:
    """The ``omniglot_mlp``/``mlp5`` forward written out by hand (linear, batch_norm, relu).

    Independent of ``functional_call`` and the engine, for gradient tests. ``masks`` multiply
    the hidden Linear weights they name.
    """
    import torch.nn.functional as F

    h = x.flatten(1)
    layer = 1
    while f"features.{layer}.linear.weight" in params:
        name = f"features.{layer}.linear.weight"
        weight = params[name] * masks[name] if masks and name in masks else params[name]
        h = F.linear(h, weight, params[f"features.{layer}.linear.bias"])
        h = F.batch_norm(
            h,
            None,
            None,
            params[f"features.{layer}.normalize.weight"],
            params[f"features.{layer}.normalize.bias"],
            training=True,
            eps=1e-3,
        )
        h = torch.relu(h)
        layer += 1
    return F.linear(h, params["classifier.weight"], params["classifier.bias"])


def reference_meta_loss(
    params: dict,
    masks: dict | None,
    episodes,
    learning_rates: dict,
    steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """Mean query loss over tasks after ``steps`` plain SGD steps: the straightforward per-task
    implementation every engine is checked against (differentiable w.r.t. params and masks)."""
    import torch.nn.functional as F

    total = 0.0
    for ep in episodes:
        fast = dict(params)
        for _ in range(steps):
            loss = F.cross_entropy(reference_mlp_forward(fast, masks, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - learning_rates[n] * g for (n, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(reference_mlp_forward(fast, masks, ep.query_x), ep.query_y)
    return total / len(episodes)
