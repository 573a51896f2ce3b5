"""Run a backbone on all of a meta-batch's tasks at once, each task with its own parameters.

Layout ("packed"): the ``T`` tasks' activations sit side by side in the channel dimension, an
``(N, C, ...)`` activation of each task becoming one ``(N, T*C, ...)`` tensor, task-major. Then:

- element-wise operations, pooling, ``flatten(x, 1)`` and residual additions act on each task's
  channels alone, unchanged;
- a convolution with per-task weights ``(T, C_out, C_in, k, k)`` is one grouped convolution
  (``groups * T``);
- a Linear layer with per-task weights ``(T, out, in)`` is one batched matrix product;
- a batch-statistics BatchNorm over ``T*C`` channels computes each task's own statistics, so
  its forward and every derivative are the per-task BatchNorm's.

:class:`TaskBatch` is a ``TorchFunctionMode`` that rewrites ``F.linear``, ``F.conv2d`` and
``F.batch_norm`` calls whose weight carries the leading task dimension; the backbone's own
``forward`` runs through ``torch.func.functional_call`` with such weights. A model is only run
this way when :func:`unsupported` finds every module among the layers whose operations keep
tasks apart (an unknown module could mix channels and silently mix tasks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from fewmask.engine.low_rank import LowRankLinears
from fewmask.interfaces import Params

PLAIN = (nn.Sequential, nn.Identity)
"""Containers whose ``forward`` only calls their children."""

CHANNELWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Softplus,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
"""Torch layers that act on each channel alone (element-wise activations, pooling): in a user's
own module (:func:`fewmask.as_backbone`) they keep tasks apart. Dropout is not among them: its
random draws would differ from the per-task path's."""


def declares_separable(kind: type) -> bool:
    """Whether the class itself (not a base class) sets ``task_separable = True``
    (:attr:`fewmask.interfaces.Backbone.task_separable`)."""
    return kind.__dict__.get("task_separable", False) is True


def unsupported(backbone: nn.Module) -> str | None:
    """Why ``backbone`` cannot run packed (the first offending module), or None if it can.

    A module is accepted if its class declares itself task-separable (the built-in MLP, Conv4,
    ResNet-12, their blocks and a wrapped user module do), or is one of the plain torch layers
    below or in :data:`CHANNELWISE`; a subclass that does not declare it again is not (it may
    override ``forward`` with anything).
    """
    for name, module in backbone.named_modules():
        kind = type(module)
        where = f"module {name or '(root)'} ({kind.__name__})"
        if kind in PLAIN or kind in CHANNELWISE or declares_separable(kind):
            if getattr(getattr(module, "config", None), "checkpoint_blocks", False):
                return f"{where} recomputes blocks (checkpoint_blocks)"
        elif kind is nn.Linear:
            pass
        elif kind is nn.Flatten:
            if module.start_dim != 1 or module.end_dim != -1:
                return f"{where} flattens other dimensions than 1..-1"
        elif kind is nn.Conv2d:
            if module.padding_mode != "zeros":
                return f"{where} has padding_mode {module.padding_mode!r}"
        elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            if module.track_running_stats:
                return f"{where} keeps running statistics"
        else:
            return f"{where} is not a module the batched engine knows"
    return None


def pack(x: Tensor) -> Tensor:
    """``(T, N, C, ...)`` task-stacked inputs as one packed ``(N, T*C, ...)`` tensor."""
    tasks, n, channels = x.shape[:3]
    return x.transpose(0, 1).reshape(n, tasks * channels, *x.shape[3:])


def unpack_logits(logits: Tensor, tasks: int) -> Tensor:
    """Packed ``(N, T*K)`` logits as ``(T, N, K)``."""
    n = logits.shape[0]
    return logits.view(n, tasks, -1).transpose(0, 1)


def packed_forward(
    backbone: nn.Module,
    params: Params,
    x: Tensor,
    tasks: int,
    low_rank: LowRankLinears | None = None,
) -> Tensor:
    """Logits ``(T, N, K)`` of ``backbone`` run with per-task ``params`` (leading dim ``T``) on
    packed inputs ``x`` (:func:`pack`); the linear weights ``low_rank`` knows enter shared, with
    their per-task low-rank updates (:mod:`fewmask.engine.low_rank`)."""
    with TaskBatch(low_rank):
        logits = functional_call(backbone, params, (x,))
    return unpack_logits(logits, tasks)


class TaskBatch(TorchFunctionMode):
    """Layers with a per-task weight (one more leading dimension than usual) run packed, and
    so do the shared linear weights of ``low_rank``."""

    def __init__(self, low_rank: LowRankLinears | None = None):
        super().__init__()
        self.low_rank = low_rank

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            call = _bind_linear(*args, **kwargs)
            if call["weight"].dim() == 3:
                return _linear(**call)
            if self.low_rank is not None:
                out = self.low_rank.linear(**call)
                if out is not None:
                    return out
        elif func is F.conv2d:
            call = _bind_conv(*args, **kwargs)
            if call["weight"].dim() == 5:
                return _conv2d(**call)
        elif func is F.batch_norm:
            call = _bind_batch_norm(*args, **kwargs)
            weight = call["weight"] if call["weight"] is not None else call["bias"]
            if weight is not None and weight.dim() == 2:
                return _batch_norm(**call)
        return func(*args, **kwargs)


def _linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``y_t = x_t W_t^T + b_t`` computed as ``W_t x_t^T``: the weight-sized gradient
    ``dL/dW_t`` then comes out contiguous in the weight's own layout (the transposed product
    leaves it strided, and every weight-sized operation after it several times slower)."""
    tasks, out_features, in_features = weight.shape
    n = input.shape[0]
    x = input.view(n, tasks, in_features).permute(1, 2, 0)  # (T, in, N)
    if bias is None:
        y = torch.bmm(weight, x)
    else:
        y = torch.baddbmm(bias.unsqueeze(2), weight, x)  # (T, out, N)
    return y.permute(2, 0, 1).reshape(n, tasks * out_features)


def _conv2d(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    tasks = weight.shape[0]
    weight = weight.reshape(-1, *weight.shape[2:])
    bias = bias.reshape(-1) if bias is not None else None
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups * tasks)


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps):
    if running_mean is not None or running_var is not None or not training:
        raise RuntimeError("the batched engine runs BatchNorm with batch statistics only")
    weight = weight.reshape(-1) if weight is not None else None
    bias = bias.reshape(-1) if bias is not None else None
    return F.batch_norm(input, None, None, weight, bias, True, momentum, eps)


def _bind_linear(input, weight, bias=None) -> dict:
    return locals()


def _bind_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> dict:
    return locals()


def _bind_batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
) -> dict:
    return locals()
