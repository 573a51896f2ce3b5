"""Test helpers for fewmask and its plugins, importable without pytest.

- :func:`make_dataset`: random uint8 images in a :class:`~fewmask.interfaces.FewShotDataset`;
- :func:`reference_meta_loss`, :func:`reference_meta_gradient`: the straightforward per-task
  loop (:func:`reference_task_loss`) that every engine path, test and benchmark is checked
  against, over the hand-written :func:`reference_mlp_forward` or any backbone
  (:func:`functional_forward`).

The pytest fixtures live in :mod:`fewmask.pytest_plugin`
(``pytest_plugins = ["fewmask.pytest_plugin"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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


Forward = Callable[[dict, "dict | None", torch.Tensor], torch.Tensor]
"""``forward(params, masks, x) -> logits``: a network run with given (masked) parameters."""


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


def functional_forward(backbone: torch.nn.Module) -> Forward:
    """The forward of any backbone through ``torch.func.functional_call``, with every masked
    weight replaced by ``weight * mask``."""
    from torch.func import functional_call

    def forward(params: dict, masks: dict | None, x: torch.Tensor) -> torch.Tensor:
        masks = masks or {}
        masked = {n: p * masks[n] if n in masks else p for n, p in params.items()}
        return functional_call(backbone, masked, (x,))

    return forward


def reference_task_loss(
    forward: Forward,
    params: dict,
    masks: dict | None,
    episode,
    learning_rates: Mapping[str, float],
    steps: int,
    first_order: bool = False,
) -> torch.Tensor:
    """One task's query loss after ``steps`` plain SGD steps ``p - lr * g`` on its support set
    (parameters whose rate is 0 or missing are not adapted): the per-task reference loop."""
    import torch.nn.functional as F

    fast = dict(params)
    names = [n for n in fast if learning_rates.get(n, 0.0) != 0.0]
    for _ in range(steps):
        loss = F.cross_entropy(forward(fast, masks, episode.support_x), episode.support_y)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=not first_order)
        fast = {**fast, **{n: fast[n] - learning_rates[n] * g for n, g in zip(names, grads)}}
    return F.cross_entropy(forward(fast, masks, episode.query_x), episode.query_y)


def reference_meta_loss(
    params: dict,
    masks: dict | None,
    episodes,
    learning_rates: Mapping[str, float],
    steps: int,
    first_order: bool = False,
    forward: Forward = reference_mlp_forward,
) -> torch.Tensor:
    """Mean query loss over tasks (:func:`reference_task_loss`), differentiable w.r.t. params
    and masks: what every engine path is checked against. ``forward`` defaults to the
    hand-written MLP; :func:`functional_forward` runs any backbone."""
    total = 0.0
    for episode in episodes:
        total = total + reference_task_loss(
            forward, params, masks, episode, learning_rates, steps, first_order
        )
    return total / len(episodes)


def reference_meta_gradient(
    forward: Forward,
    params: dict,
    masks: Callable[[], dict | None],
    episodes,
    learning_rates: Mapping[str, float],
    steps: int,
    targets: list[torch.Tensor],
    first_order: bool = False,
) -> list[torch.Tensor]:
    """The gradient of :func:`reference_meta_loss` w.r.t. ``targets``, one task at a time (one
    task's graph alive, as learn2learn and the authors' code do). ``masks()`` is called per
    task, e.g. ``masker.masks``, so each task's backward has its own mask graph."""
    total: list[torch.Tensor | None] = [None] * len(targets)
    for episode in episodes:
        loss = reference_task_loss(
            forward, params, masks(), episode, learning_rates, steps, first_order
        )
        grads = torch.autograd.grad(loss / len(episodes), targets, allow_unused=True)
        for i, grad in enumerate(grads):
            if grad is not None:
                total[i] = grad if total[i] is None else total[i] + grad
    return [torch.zeros_like(t) if g is None else g for t, g in zip(targets, total)]
