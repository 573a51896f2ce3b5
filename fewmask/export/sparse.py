"""A sparse (CSR) copy of a masked network, and CPU timings of it against the dense one.

Masked ``nn.Linear`` layers become a CSR matrix times the input; masked ``nn.Conv2d`` layers
(groups 1, zero padding) a CSR matrix times the unfolded input (im2col). Both compute the masked
network's function; :func:`time_forwards` measures the two forwards in one run, alternating,
and reports what it measured (unstructured sparsity at a moderate density is often slower on a
CPU than the dense matmul).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewmask.export.subnetwork import Subnetwork


class CSRLinear(nn.Module):
    """``x @ W.T + b`` with ``W`` stored in CSR."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        y = (self.weight @ x.reshape(-1, x.shape[-1]).T).T
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if self.bias is None else y + self.bias


class CSRConv2d(nn.Module):
    """A convolution as ``W_csr @ unfold(x)`` (groups 1, zero padding)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = conv.weight.detach().reshape(conv.out_channels, -1).to_sparse_csr()
        self.bias = None if conv.bias is None else conv.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        length = cols.shape[-1]
        flat = cols.transpose(0, 1).reshape(cols.shape[1], batch * length)
        out = (self.weight @ flat).reshape(self.out_channels, batch, length).transpose(0, 1)
        h = _out_size(height, 0, self)
        w = _out_size(width, 1, self)
        out = out.reshape(batch, self.out_channels, h, w)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def _out_size(size: int, i: int, conv: Any) -> int:
    k, s, p, d = conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def dense_copy(sub: Subnetwork) -> nn.Module:
    """The backbone with ``W * mask`` as its weights."""
    model = copy.deepcopy(sub.backbone)
    model.load_state_dict(sub.masked_state())
    return model


def sparse_copy(sub: Subnetwork) -> tuple[nn.Module | None, str]:
    """The backbone with every masked layer in CSR, or ``(None, why not)``."""
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return _sparse_copy(sub)


def _sparse_copy(sub: Subnetwork) -> tuple[nn.Module | None, str]:
    model = dense_copy(sub)
    for name in sub.masks:
        path, _, leaf = name.rpartition(".")
        module = model.get_submodule(path) if path else model
        if leaf != "weight":
            return None, f"{name} is not a layer's weight"
        if isinstance(module, nn.Linear):
            replacement: nn.Module = CSRLinear(module)
        elif (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            replacement = CSRConv2d(module)
        else:
            return None, f"{name} belongs to a {type(module).__name__}, which has no CSR form here"
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return model, ""


def time_forwards(sub: Subnetwork, batch: int = 64, budget_s: float = 0.5) -> dict[str, Any]:
    """Median CPU times of the dense masked forward and the CSR forward on ``batch`` images,
    measured alternately in this process, with the largest difference of their outputs."""
    images = torch.rand((batch, *sub.input_shape), generator=torch.Generator().manual_seed(0))
    images = images.to(sub.dtype)
    dense = dense_copy(sub).eval()
    sparse, why = sparse_copy(sub) if not sub.dense else (None, "a dense network has no mask")
    result: dict[str, Any] = {"batch": batch, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        expected = dense(images)
        if sparse is None:
            return {**result, "dense_ms": _median_ms(lambda: dense(images), budget_s), "why": why}
        result["max_abs_difference"] = float((sparse(images) - expected).abs().max())
        dense_times, sparse_times = [], []
        start = time.perf_counter()
        for _ in range(3):  # warm up both
            dense(images), sparse(images)
        while len(dense_times) < 5 or (
            time.perf_counter() - start < budget_s and len(dense_times) < 200
        ):
            dense_times.append(_once(lambda: dense(images)))
            sparse_times.append(_once(lambda: sparse(images)))
    result["dense_ms"] = 1e3 * statistics.median(dense_times)
    result["sparse_ms"] = 1e3 * statistics.median(sparse_times)
    result["repeats"] = len(dense_times)
    result["sparse_over_dense"] = result["sparse_ms"] / result["dense_ms"]
    return result


def _once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_ms(fn: Callable[[], Any], budget_s: float) -> float:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < budget_s and len(times) < 200):
        times.append(_once(fn))
    return 1e3 * statistics.median(times)
