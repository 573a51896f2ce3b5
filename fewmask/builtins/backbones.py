"""Built-in backbones: the fully connected networks of the Meta-ticket paper.

``omniglot_mlp``: 784 -> 256, 128, 64, 64 (times ``width``) -> ways; ``mlp5``: 3072 -> 1024, 512,
256, 128 -> ways. Each hidden block is Linear -> BatchNorm1d (eps 1e-3, batch statistics always,
no running statistics) -> ReLU. Weights are kaiming-normal (fan-in, ReLU), biases 0.

Also the pieces every built-in backbone shares: :class:`LinearHeadBackbone` (the timm-style head
methods over a Linear ``classifier``), :func:`require_valid` (the config checks, for backbones
built directly from Python) and :func:`size_problems` (the parameter-count limit that config
checks apply before anything is allocated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import attrs
import torch
from torch import Tensor, nn

from fewmask.errors import ConfigError
from fewmask.interfaces import Backbone
from fewmask.options import check_values, option

OPTIONS = "$.backbone.options"
MAX_PARAMETERS = 2**31
"""Configs whose backbone would have more parameters than this are refused (8 GiB in float32)."""


def require_valid(config: object) -> None:
    """Raise the config's problems (bounds and ``check()``) as one :class:`ConfigError`.

    Configs read from files are checked at validation time; this guard covers config objects
    built in Python and handed straight to a backbone's constructor.
    """
    problems = check_values(config, OPTIONS)
    if problems:
        raise ConfigError(problems)


def size_problems(
    config: object, count: Callable[[object], float], fields: Iterable[str]
) -> dict[str, str]:
    """``{field: problem}`` when ``count(config)`` exceeds :data:`MAX_PARAMETERS`, else ``{}``.

    ``count`` is a lower bound that needs only the options (smallest images, one class). The
    problem is reported on each of ``fields`` that, reset to its default alone, brings the count
    under the limit (on all of them when none does).
    """
    total = _safe_count(count, config)
    if total <= MAX_PARAMETERS:
        return {}
    fields = list(fields)
    defaults = attrs.fields_dict(type(config))
    culprits = [
        field
        for field in fields
        if _safe_count(count, attrs.evolve(config, **{field: defaults[field].default}))
        <= MAX_PARAMETERS
    ]
    size = f"at least {total:.3g}" if math.isfinite(total) else "too many"
    message = (
        f"the backbone would have {size} parameters, more than the limit of 2**31 "
        f"({MAX_PARAMETERS:,}); choose smaller sizes"
    )
    return {field: message for field in culprits or fields}


def _safe_count(count: Callable[[object], float], config: object) -> float:
    try:
        return float(count(config))
    except OverflowError:  # beyond the float range
        return math.inf


def _hidden_sizes(default: tuple[int, ...]):
    return option(default, help="hidden layer widths before the width factor")


@attrs.frozen
class OmniglotMLPConfig:
    """Options of ``omniglot_mlp``."""

    hidden: tuple[int, ...] = _hidden_sizes((256, 128, 64, 64))
    width: float = option(1.0, gt=0, help="width factor: each hidden size becomes int(size*width)")
    bn_eps: float = option(1e-3, gt=0, help="BatchNorm epsilon")
    batch_norm: bool = option(True, help="BatchNorm after every hidden Linear")
    mask_head: bool = option(
        False, help="let maskers prune the classifier weight too (the constant-weight experiment)"
    )

    def check(self) -> dict[str, str]:
        if any(size < 1 for size in self.hidden):
            return {"hidden": f"sizes must be positive, got {list(self.hidden)}"}
        smallest = min(self.hidden, default=None)
        if smallest is not None and _scaled(smallest, self.width) < 1:  # int(size*width) < 1
            return {
                "width": f"{self.width:g} leaves the hidden layer of size {smallest} with 0 units "
                "(int(size*width) must be at least 1)"
            }
        return size_problems(self, lambda c: mlp_parameter_count(c, (1,), 1), ("hidden", "width"))


@attrs.frozen
class MLP5Config(OmniglotMLPConfig):
    """Options of ``mlp5`` (the paper's 5-layer MLP for 32x32x3 images)."""

    hidden: tuple[int, ...] = _hidden_sizes((1024, 512, 256, 128))


def _scaled(size: int, width: float) -> float:
    try:
        return size * width
    except OverflowError:  # a size beyond the float range
        return math.inf


def hidden_units(config: OmniglotMLPConfig) -> list[int]:
    """The hidden layer sizes after the width factor."""
    return [int(size * config.width) for size in config.hidden]


def mlp_parameter_count(
    config: OmniglotMLPConfig, input_shape: tuple[int, ...], num_classes: int
) -> int:
    """Parameters of :class:`MLP` built with these arguments (without building it)."""
    sizes = [math.prod(input_shape), *hidden_units(config)]
    norm = 2 if config.batch_norm else 0
    hidden = sum(a * b + b + norm * b for a, b in zip(sizes[:-1], sizes[1:]))
    return hidden + sizes[-1] * num_classes + num_classes


class LinearHeadBackbone(Backbone):
    """A backbone whose head is the Linear module ``self.classifier`` (all built-in ones).

    Subclasses set ``num_features`` and may override :meth:`init_classifier`.
    """

    classifier: nn.Linear

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = self.classifier.weight
        classifier = nn.Linear(self.num_features, num_classes, device=old.device, dtype=old.dtype)
        self.init_classifier(classifier)
        self.classifier = classifier

    def init_classifier(self, classifier: nn.Linear) -> None:
        """Initialise a new head (PyTorch's default Linear init unless overridden)."""


def init_linear(module: nn.Linear) -> None:
    """Kaiming-normal weight (fan-in, ReLU) and zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(module.bias)


class LinearBlock(nn.Module):
    """Linear -> (BatchNorm1d) -> ReLU; BatchNorm always uses the current batch's statistics."""

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    def __init__(self, fan_in: int, fan_out: int, bn_eps: float, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.normalize = (
            nn.BatchNorm1d(fan_out, eps=bn_eps, track_running_stats=False)
            if batch_norm
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.normalize(self.linear(x)))


class MLP(LinearHeadBackbone):
    """A fully connected classifier: flatten, hidden :class:`LinearBlock` s, Linear head."""

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    def __init__(self, config: OmniglotMLPConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        require_valid(config)
        self.config = config
        self.input_shape = tuple(input_shape)  # checked against the data by the Trainer
        sizes = [math.prod(input_shape), *hidden_units(config)]
        self.features = nn.Sequential(
            nn.Flatten(),
            *(
                LinearBlock(a, b, config.bn_eps, config.batch_norm)
                for a, b in zip(sizes[:-1], sizes[1:])
            ),
        )
        self.num_features = sizes[-1]
        self.classifier = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear(module)

    def init_classifier(self, classifier: nn.Linear) -> None:
        init_linear(classifier)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def maskable_parameter_names(self) -> list[str]:
        hidden = [
            f"features.{i}.linear.weight"
            for i, block in enumerate(self.features)
            if isinstance(block, LinearBlock)
        ]
        return hidden + (["classifier.weight"] if self.config.mask_head else [])
