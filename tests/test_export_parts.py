"""The parts of fewmask.export on convolutional backbones built directly: the CSR forward and
the ONNX graph compute the masked network; the digest ignores the sign of pruned zeros and sees
any kept change."""

from __future__ import annotations

import pytest
import torch

import fewmask
from fewmask.export import onnx_io
from fewmask.export.sparse import dense_copy, sparse_copy
from fewmask.export.subnetwork import Subnetwork, weights_digest

BACKBONES = {
    "conv4": ({"channels": 6}, (1, 28, 28)),
    "resnet12": ({"channels": [4, 4, 6, 6]}, (3, 16, 16)),
    "omniglot_mlp": ({"hidden": [16, 8]}, (1, 28, 28)),
}


def subnetwork(name: str, density: float = 0.4) -> Subnetwork:
    options, shape = BACKBONES[name]
    torch.manual_seed(0)
    backbone = fewmask.create("backbone", name, options, input_shape=shape, num_classes=5)
    generator = torch.Generator().manual_seed(1)
    masks = {
        n: (torch.rand(backbone.get_parameter(n).shape, generator=generator) < density).float()
        for n in backbone.maskable_parameter_names()
    }
    inner = fewmask.create("inner", "sgd", {"lr": 0.4})
    inner.attach(backbone)
    objective = fewmask.create("objective", "maml")
    return Subnetwork(backbone, masks, inner, objective, {"seed": 1}, shape, 5, 0, name)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_csr_forward_computes_the_masked_network(name):
    sub = subnetwork(name)
    model, why = sparse_copy(sub)
    assert model is not None, why
    x = torch.rand(6, *sub.input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = onnx_io.torch_logits(sub, x)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dense_copy(sub)(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_onnx_graph_computes_the_masked_network(name):
    pytest.importorskip("onnxruntime")
    sub = subnetwork(name)
    data = onnx_io.to_bytes(sub)
    assert onnx_io.check_onnx(sub, data, batch=5, seed=3) < 1e-4


def test_the_digest_ignores_pruned_values_and_sees_kept_ones():
    sub = subnetwork("omniglot_mlp")
    before = sub.digest()
    name = next(iter(sub.masks))
    weight = sub.backbone.get_parameter(name)
    pruned, kept = sub.masks[name] == 0, sub.masks[name] != 0
    with torch.no_grad():
        weight[pruned] = -weight[pruned].abs() - 1  # W * 0 = -0.0 for every pruned entry
    assert sub.digest() == before
    with torch.no_grad():
        weight[kept.nonzero()[0].tolist()[0], kept.nonzero()[0].tolist()[1]] += 1e-6
    assert sub.digest() != before
    state = sub.masked_state()
    assert weights_digest(state, {}) != weights_digest(state, sub.masks)  # the masks count
