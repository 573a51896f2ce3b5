"""The ``torchvision`` backbone: a randomly initialised torchvision classifier through
``fewmask.as_backbone``.

The model named by ``model`` is built with ``torchvision.models.get_model(model, weights=None,
num_classes=ways, **kwargs)``; for images with other than 3 channels its first convolution is
replaced by one of the same shape that takes C channels. ``fewmask.as_backbone`` then wraps it:
the head is the model's last ``nn.Linear`` (``fc``, ``classifier.N``, ``heads.head``), every
BatchNorm uses batch statistics, activations are out-of-place, and the maskable weights are the
convolution and Linear weights outside the head.

The options are checked before anything is built (``TorchvisionConfig.check``, run by
``fewmask validate``): the model name against ``torchvision.models.list_models`` (with
suggestions), and the ``kwargs`` that the adapter sets itself.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs
import torchvision
from torch import nn

from fewmask import ConfigError, WrappedBackbone, option

OPTIONS = "$.backbone.options"
RESERVED_KWARGS = {
    "weights": "the model is always randomly initialised (weights=None)",
    "num_classes": "the number of classes comes from the episodes (ways)",
}
"""Arguments of ``torchvision.models.get_model`` that the adapter sets itself, and why."""


def classification_models() -> list[str]:
    """The names of torchvision's image classification models."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


@attrs.frozen
class TorchvisionConfig:
    """Options of ``torchvision``."""

    model: str = option(
        "resnet18",
        help="a classification model of torchvision.models.list_models() (always weights=None)",
    )
    kwargs: dict[str, Any] = option(
        factory=dict,
        help="extra keyword arguments of the model builder, e.g. {zero_init_residual: true} or "
        "{image_size: 32} for vision transformers",
    )

    def check(self) -> dict[str, str]:
        problems = {}
        if self.model not in classification_models():
            problems["model"] = unknown_model_message(self.model)
        reserved = sorted(set(self.kwargs) & set(RESERVED_KWARGS))
        if reserved:
            problems["kwargs"] = "; ".join(
                f"{key} cannot be set here: {RESERVED_KWARGS[key]}" for key in reserved
            )
        return problems


def suggest_models(name: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` classification model names close to ``name`` (case-insensitive; names
    containing it first), best first."""
    target = name.lower().replace("-", "_")
    if not target:
        return []
    names = classification_models()
    containing = [n for n in names if target in n]
    close = difflib.get_close_matches(target, names, n=limit, cutoff=0.6)
    return list(dict.fromkeys([*close, *containing]))[:limit]


def unknown_model_message(name: str) -> str:
    """``unknown torchvision classification model 'x'. Did you mean ...?``"""
    suggestions = suggest_models(name)
    hint = (
        "Did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        if suggestions
        else "See torchvision.models.list_models(module=torchvision.models) for the names."
    )
    other = set(torchvision.models.list_models()) - set(classification_models())
    kind = " (it is not a classification model)" if name in other else ""
    return f"unknown torchvision classification model {name!r}{kind}. {hint}"


def take_channels(model: nn.Module, channels: int) -> None:
    """Replace the model's first ``nn.Conv2d`` by one that takes ``channels`` input channels."""
    found = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None)
    )
    name, conv = found
    if conv is None or conv.in_channels == channels:
        return
    if conv.groups != 1:
        raise ConfigError([f"$.backbone: cannot give {name} {channels} input channels"])
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


class TorchvisionBackbone(WrappedBackbone):
    """A torchvision model (``self.model``), wrapped by ``fewmask.as_backbone``."""

    config_class = TorchvisionConfig
    description = "any torchvision classification model, weights=None, batch-statistics BatchNorm"

    def __init__(self, config: TorchvisionConfig, input_shape: tuple[int, ...], num_classes: int):
        problems = config.check()  # already run at validation for configs read from files
        if problems:
            raise ConfigError([f"{OPTIONS}.{field}: {text}" for field, text in problems.items()])
        if len(input_shape) != 3:
            raise ConfigError(
                [f"$.backbone: torchvision models need images (C, H, W), got {input_shape}"]
            )
        try:
            model = torchvision.models.get_model(
                config.model, weights=None, num_classes=num_classes, **config.kwargs
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(
                [f"{OPTIONS}.kwargs: torchvision's {config.model!r} rejected them: {error}"]
            ) from error
        take_channels(model, input_shape[0])
        try:
            super().__init__(model, input_shape=input_shape)
        except ConfigError as error:
            raise ConfigError(
                [f"{OPTIONS}.model: {config.model!r}: {_text(p)}" for p in error.problems]
            ) from error
        self.config = config


def _text(problem: str) -> str:
    """A problem without its ``$.path: `` prefix."""
    return problem.split(": ", 1)[1] if problem.startswith("$.") else problem
