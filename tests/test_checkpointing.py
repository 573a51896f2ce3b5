"""Activation checkpointing (``checkpoint_blocks``) changes memory, never the meta-gradient."""

from __future__ import annotations

import pytest
import torch

from fewmask import Engine, create
from fewmask.interfaces import Episode

TINY = {
    "conv4": {"channels": 3},
    "resnet12": {"channels": [2, 3, 3, 4]},
    "wrn28_10": {"depth": 10, "widen_factor": 1},
}
SHAPE, WAYS = (3, 16, 16), 3


def episodes(count=2):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(WAYS)

    def images(n):
        return torch.randn(n * WAYS, *SHAPE, generator=g, dtype=torch.float64)

    return [Episode(images(2), labels.repeat(2), images(3), labels.repeat(3)) for _ in range(count)]


def meta_grads(name, masker, checkpoint, saved=None):
    torch.manual_seed(0)
    options = {**TINY[name], "checkpoint_blocks": checkpoint}
    backbone = create("backbone", name, options, input_shape=SHAPE, num_classes=WAYS)
    masker = create("masker", masker)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": 0.3, "steps": 2})
    objective = create("objective", "metaticket" if masker.meta_parameters() else "maml")
    engine = Engine(backbone, masker, inner, objective)

    def pack(tensor):
        if saved is not None:
            saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return engine.meta_step(episodes()).grads


@pytest.mark.parametrize("masker", ["dense", "metaticket"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpointed_blocks_give_the_same_second_order_meta_gradient(name, masker):
    plain = meta_grads(name, masker, False)
    checked = meta_grads(name, masker, True)
    assert plain.keys() == checked.keys()
    for key in plain:
        torch.testing.assert_close(checked[key], plain[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TINY))
def test_checkpointed_blocks_save_fewer_activations(name):
    plain, checked = [], []
    meta_grads(name, "metaticket", False, plain)
    meta_grads(name, "metaticket", True, checked)
    assert sum(checked) < 0.8 * sum(plain)
