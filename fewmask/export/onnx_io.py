"""The ``onnx`` format: the forward pass of the (adapted) network, masks applied to its weights.

The graph takes float images in [0, 1] of shape ``[batch, C, H, W]`` (any batch) and returns
logits ``[batch, ways]``. fewmask's BatchNorm always normalises with the statistics of the
current batch (as during meta-training and meta-test), so each one is exported as explicit
mean and variance over the batch (ONNX's BatchNormalization would use running statistics); like
the network itself, its outputs for an image depend on the other images of the batch. The model's
metadata holds the fewmask and torch versions and the run's config.
"""

from __future__ import annotations

import copy
import io
import json
import warnings

import torch
from torch import Tensor, nn

from fewmask.errors import ExportError
from fewmask.export.safetensors_io import require
from fewmask.export.subnetwork import Subnetwork
from fewmask.version import __version__

OPSET = 17


class BatchStatisticsNorm(nn.Module):
    """BatchNorm with the current batch's statistics, written as plain tensor operations."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        shape = [1, -1, *([1] * (x.dim() - 2))]
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y


def exportable(sub: Subnetwork) -> nn.Module:
    """A copy of the backbone with ``W * mask`` as its weights and batch-statistics norms."""
    model = copy.deepcopy(sub.backbone).cpu()
    model.load_state_dict(sub.masked_state())
    for name, module in list(model.named_modules()):
        uses_batch = isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.training or not module.track_running_stats
        )
        if uses_batch:
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent) if parent else model, child, BatchStatisticsNorm(module)
            )
    return model.eval()


def to_bytes(sub: Subnetwork, batch: int = 4) -> bytes:
    """The ONNX model of ``sub``'s forward pass."""
    onnx = require("onnx")
    model = exportable(sub)
    example = torch.rand((batch, *sub.input_shape), generator=torch.Generator().manual_seed(0))
    example = example.to(sub.dtype)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notes
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
            )
    except Exception as exc:  # an operation ONNX cannot express
        raise ExportError(f"{sub.source}: torch.onnx.export failed: {exc}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    info = {
        "format": "fewmask.onnx",
        "fewmask_version": __version__,
        "torch_version": torch.__version__,
        "config": json.dumps(sub.config, sort_keys=True),
        "input_shape": json.dumps(list(sub.input_shape)),
        "iteration": str(sub.iteration),
        "digest": sub.digest(),
    }
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def run_onnx(data: bytes, images: Tensor) -> Tensor:
    """The logits onnxruntime computes with the ONNX model ``data`` on ``images``."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.detach().cpu().numpy()})
    return torch.from_numpy(logits)


def torch_logits(sub: Subnetwork, images: Tensor) -> Tensor:
    """The logits of ``sub``'s masked forward in torch (what the ONNX model must reproduce)."""
    from fewmask.engine.exact import masked_forward

    params = dict(sub.backbone.named_parameters())
    with torch.no_grad():
        return masked_forward(sub.backbone, params, sub.masks, images.to(sub.dtype))


def check_onnx(sub: Subnetwork, data: bytes, batch: int = 8, seed: int = 0) -> float:
    """The largest absolute difference between onnxruntime's and torch's logits on fixed random
    images (``batch`` of them, drawn with ``seed``)."""
    images = torch.rand((batch, *sub.input_shape), generator=torch.Generator().manual_seed(seed))
    images = images.to(torch.float32)
    expected = torch_logits(sub, images.to(sub.dtype)).float()
    return float((run_onnx(data, images.to(sub.dtype)).float() - expected).abs().max())
