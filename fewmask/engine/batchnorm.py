"""Batch-statistics BatchNorm whose double backward is a few passes instead of PyTorch's composite.

Second-order MAML differentiates BatchNorm's backward. PyTorch's ``batchnorm_double_backward`` is
written out of many element-wise operations over the activation; on CPU it is one of the largest
costs of a Conv4 meta-iteration. :func:`batch_norm_train` computes the same function (forward
and first backward are PyTorch's fused kernels, except that channels-last inputs get precise
two-pass statistics) with a hand-derived double backward: three per-channel reductions and two
element-wise combinations.

:func:`fused_batchnorm` is a context in which every ``F.batch_norm`` call that uses the batch's
statistics and keeps no running statistics (all built-in backbones) goes through it, if its input
has at least :data:`MIN_NUMEL` values or is channels-last; any other call, and any call under
autocast, runs unchanged (on small inputs, e.g. the 5-MLP's 25 x 1024, the Python overhead of the
hand-written backward outweighs its savings: 7% slower per meta-iteration). The double backward
is exact up to second order: differentiating it again (third order) raises an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import Function, once_differentiable
from torch.overrides import TorchFunctionMode

CL = torch.channels_last
MIN_NUMEL = 1 << 17
"""Smaller BatchNorm inputs keep PyTorch's implementation under :func:`fused_batchnorm`."""


def _channel(v: Tensor, ndim: int) -> Tensor:
    """A per-channel vector shaped to broadcast against an ``(N, C, ...)`` tensor."""
    return v.view(1, -1, *([1] * (ndim - 2)))


class _BatchNormFn(Function):
    """``y = weight * (x - mean) * invstd + bias`` with the statistics of ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
        if _is_channels_last(x):
            y, mean, invstd = _channels_last_batch_norm(x, weight, bias, eps)
        else:
            y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        grad_x, grad_w, grad_b = _BatchNormGrad.apply(grad_y, x, weight, mean, invstd, ctx.eps)
        return (
            grad_x,
            grad_w if weight is not None else None,
            grad_b if ctx.has_bias else None,
            None,
        )


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=CL)


def _channels_last_batch_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm of a channels-last tensor with two-pass statistics.

    PyTorch's channels-last CPU kernel loses precision when the mean is large against the spread
    (relative error 1e-4 where the NCHW kernel has 3e-7); summing each image's pixels and then
    the images, on centred values for the variance, keeps it at the NCHW kernel's level.
    """
    n, c, h, w = x.shape

    def channel_sums(t: Tensor) -> Tensor:  # t is channels-last: a view of (N, H*W, C)
        return t.permute(0, 2, 3, 1).reshape(n, h * w, c).sum(1).sum(0)

    mean = channel_sums(x) / (n * h * w)
    centred = x - _channel(mean, 4)
    invstd = (channel_sums(centred * centred) / (n * h * w) + eps).rsqrt()
    scale = invstd if weight is None else invstd * weight
    y = centred.mul_(_channel(scale, 4))
    return (y if bias is None else y.add_(_channel(bias, 4))), mean, invstd


class _BatchNormGrad(Function):
    """The first backward as a function of ``(grad_y, x, weight)``, with a closed-form backward."""

    @staticmethod
    def forward(ctx, grad_y, x, weight, mean, invstd, eps):
        mask = [True, weight is not None, True]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, eps, mask
        )
        if weight is None:  # sum(grad_y * x_hat) is still needed by the double backward
            dims = [d for d in range(x.dim()) if d != 1]
            x_hat = (x - _channel(mean, x.dim())) * _channel(invstd, x.dim())
            grad_w = (grad_y * x_hat).sum(dims)
        ctx.save_for_backward(grad_y, x, weight, mean, invstd, grad_w, grad_b)
        return grad_x, grad_w, grad_b

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_x, gg_w, gg_b):
        grad_y, x, weight, mean, invstd, s_w, s_b = ctx.saved_tensors
        return (
            *batch_norm_double_backward(
                grad_y, x, weight, mean, invstd, s_w, s_b, gg_x, gg_w, gg_b
            ),
            None,
            None,
            None,
        )


def batch_norm_double_backward(
    grad_y: Tensor,
    x: Tensor,
    weight: Tensor | None,
    mean: Tensor,
    invstd: Tensor,
    sum_gy_xhat: Tensor,
    sum_gy: Tensor,
    gg_x: Tensor | None,
    gg_w: Tensor | None,
    gg_b: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of ``<gg_x, grad_x> + <gg_w, grad_w> + <gg_b, grad_b>`` w.r.t. ``grad_y``,
    ``x`` and ``weight``, where ``(grad_x, grad_w, grad_b)`` is BatchNorm's backward.

    With ``k = weight * invstd``, ``x_hat`` the normalised input, ``M`` values per channel and
    sums over each channel: ``grad_x = k (grad_y - sum(grad_y)/M - x_hat sum(grad_y x_hat)/M)``.
    Differentiating this by hand (``x`` also moves ``mean`` and ``invstd``) gives the formulas
    below; they need ``sum(a)``, ``sum(a x_hat)`` and ``sum(a grad_y)`` for ``a = gg_x``.
    """
    ndim, dims = x.dim(), [d for d in range(x.dim()) if d != 1]
    count = x.numel() // x.size(1)
    w = weight if weight is not None else torch.ones_like(invstd)
    k = w * invstd
    x_hat = (x - _channel(mean, ndim)) * _channel(invstd, ndim)
    zeros = torch.zeros_like(invstd)
    b_w = gg_w if gg_w is not None else zeros
    b_b = gg_b if gg_b is not None else zeros
    if gg_x is not None:
        a1, a2, a3 = gg_x.sum(dims), (gg_x * x_hat).sum(dims), (gg_x * grad_y).sum(dims)
    else:
        a1 = a2 = a3 = zeros
    # d/d grad_y: k gg_x + (b_w - k a2/M) x_hat + (b_b - k a1/M)
    u = b_w - k * a2 / count  # coefficient of grad_y in dJ/dx_hat
    v = k * sum_gy_xhat / count  # minus the coefficient of gg_x in dJ/dx_hat
    gy_out = torch.addcmul(_channel(b_b - k * a1 / count, ndim), x_hat, _channel(u, ndim))
    # d/dk (k = weight * invstd)
    d_k = a3 - sum_gy * a1 / count - sum_gy_xhat * a2 / count
    grad_w = invstd * d_k if weight is not None else None
    # d/dx through x_hat (holding k) and through invstd in k
    mean_h = (u * sum_gy - v * a1) / count
    mean_hx = (u * sum_gy_xhat - v * a2) / count
    x_coef = -(invstd * mean_hx + w * d_k * invstd * invstd / count)
    x_out = torch.addcmul(_channel(-invstd * mean_h, ndim), x_hat, _channel(x_coef, ndim))
    x_out = x_out.addcmul_(grad_y, _channel(invstd * u, ndim))
    if gg_x is not None:
        gy_out = gy_out.addcmul_(gg_x, _channel(k, ndim))
        x_out = x_out.addcmul_(gg_x, _channel(-invstd * v, ndim))
    return gy_out, x_out, grad_w


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5
) -> Tensor:
    """``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` with a cheaper
    double backward."""
    return _BatchNormFn.apply(x, weight, bias, eps)


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm and not _autocast(args, kwargs):
            call = _bind_batch_norm(*args, **kwargs)
            batch_stats = call["running_mean"] is None and call["running_var"] is None
            x = call["input"]
            large = x.numel() >= MIN_NUMEL or _is_channels_last(x)  # see _channels_last_batch_norm
            if call["training"] and batch_stats and large:
                return batch_norm_train(x, call["weight"], call["bias"], call["eps"])
        return func(*args, **kwargs)


def _autocast(args: tuple, kwargs: dict) -> bool:
    x = args[0] if args else kwargs["input"]
    return torch.is_autocast_enabled(x.device.type)


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


@contextmanager
def fused_batchnorm() -> Iterator[None]:
    """Route batch-statistics ``F.batch_norm`` calls through :func:`batch_norm_train`."""
    with _Mode():
        yield
