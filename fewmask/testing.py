"""Test helpers for fewmask and its plugins, importable without pytest.

- :func:`make_dataset`: random uint8 images in a :class:`~fewmask.interfaces.FewShotDataset`;
- :func:`reference_mlp_forward`, :func:`reference_meta_loss`: the straightforward per-task
  implementation that every engine path, test and benchmark is checked against.

The pytest fixtures live in :mod:`fewmask.pytest_plugin`
(``pytest_plugins = ["fewmask.pytest_plugin"]``).
"""

from __future__ import annotations

import torch

from fewmask.interfaces import FewShotDataset


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
