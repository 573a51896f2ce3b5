"""The ``timm`` backbone: a randomly initialised timm model prepared for second-order meta-learning.

The model named by ``model_name`` is built with ``timm.create_model(name, pretrained=False,
num_classes=ways, in_chans=C, **kwargs)`` and then changed in place so that it behaves like the
built-in backbones:

- every BatchNorm (``nn.BatchNorm1d/2d/3d`` and timm's ``BatchNormAct2d``, which subclasses
  ``nn.BatchNorm2d``) drops its running statistics (``track_running_stats = False``, buffers
  ``None``), so it normalises with the current batch's statistics in train and eval mode alike,
  as the Meta-ticket code does; a model with another norm that keeps running statistics is
  rejected;
- ``nn.Hardsigmoid`` (the squeeze-excite gate of MobileNetV3 and others) is replaced by an equal
  function that PyTorch can differentiate twice (``aten::hardsigmoid_backward`` has no derivative);
- activations are made out-of-place (``inplace = False``), fused attention is switched off (the
  flash and memory-efficient attention kernels have no double backward), and timm's
  custom-autograd "memory-efficient" activations are avoided by building in exportable mode.

The backbone methods are the timm model's own: ``forward_features`` (unpooled feature maps),
``forward_head(x, pre_logits)`` (pooling and the head), ``get_classifier()`` and
``reset_classifier(n)``, so ``backbone(x)`` is ``model(x)``. Maskable weights are the weights of
every ``nn.Conv2d`` and ``nn.Linear`` (timm's subclasses included) outside the classifier.

The options are checked before anything is built (``TimmConfig.check``, run by
``fewmask validate``): the model name with ``timm.is_model`` (with suggestions), and the
``kwargs`` that the adapter sets itself or that would change what it relies on; any other
``kwargs`` by building the model on the ``meta`` device (no memory, no data), so a keyword the
model class does not take is refused by ``fewmask validate`` too.
"""

from __future__ import annotations

import difflib
from typing import Any

import attrs
import timm
import timm.layers
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewmask import Backbone, ConfigError, option

OPTIONS = "$.backbone.options"
RESERVED_KWARGS = ("pretrained", "num_classes", "in_chans")
"""Arguments of ``timm.create_model`` that the adapter sets from the episodes and images."""
ADAPTER_KWARGS = {
    "features_only": "the backbone needs the model's classifier",
    "checkpoint_path": "the model is always randomly initialised",
    "exportable": "the model is always built in exportable mode (for the double backward)",
    "scriptable": "the model is always built in exportable mode (for the double backward)",
    "no_jit": "the model is always built in exportable mode (for the double backward)",
}
"""Arguments of ``timm.create_model`` that would undo what the adapter relies on, and why."""
RUNNING_STATISTICS = ("running_mean", "running_var")


@attrs.frozen
class TimmConfig:
    """Options of ``timm``."""

    model_name: str = option(
        "resnet10t", help="any name of timm.list_models() (always built with pretrained=False)"
    )
    kwargs: dict[str, Any] = option(
        factory=dict,
        help="extra keyword arguments of timm.create_model, e.g. {drop_rate: 0.1} or "
        "{img_size: 32} for vision transformers",
    )

    def check(self) -> dict[str, str]:
        problems = {}
        if not timm.is_model(self.model_name):
            problems["model_name"] = unknown_model_message(self.model_name)
        kwargs = kwargs_problems(self.kwargs)
        if kwargs:
            problems["kwargs"] = "; ".join(kwargs)
        elif self.kwargs and not problems:
            rejected = rejected_kwargs(self.model_name, self.kwargs)
            if rejected:
                problems["kwargs"] = rejected
        return problems


def kwargs_problems(kwargs: dict[str, Any]) -> list[str]:
    """What is wrong with ``kwargs`` that can be told without building the model."""
    problems = []
    reserved = sorted(set(kwargs) & set(RESERVED_KWARGS))
    if reserved:
        problems.append(
            f"{', '.join(reserved)} cannot be set here (pretrained is always False; "
            "num_classes and in_chans come from the episodes and images)"
        )
    for key in sorted(set(kwargs) & set(ADAPTER_KWARGS)):
        problems.append(f"{key} cannot be set here: {ADAPTER_KWARGS[key]}")
    return problems


def rejected_kwargs(name: str, kwargs: dict[str, Any]) -> str | None:
    """Whether the model class takes ``kwargs``: it is built on the ``meta`` device (shapes
    only: no memory, no random draws), as ``fewmask validate`` may not read the images. Problems
    that depend on the images (``in_chans``, ``img_size``) are left to the real build."""
    rng = torch.get_rng_state()
    try:
        with torch.device("meta"), timm.layers.set_layer_config(exportable=True):
            timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as error:
        return f"timm.create_model({name!r}) rejected them: {error}"
    except Exception:  # anything else is checked when the model is built
        return None
    finally:
        torch.set_rng_state(rng)
    return None


class DoubleBackwardHardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``: the values of ``nn.Hardsigmoid``, differentiable twice."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) / 6.0


LOOK_ALIKES = str.maketrans({"o": "0", "l": "1", "-": "_"})


def _normalise(name: str) -> str:
    return name.lower().translate(LOOK_ALIKES)


def suggest_models(name: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` timm model names close to ``name``, best first.

    Names are compared case-insensitively with look-alike characters (``O``/``0``, ``l``/``1``,
    ``-``/``_``) made equal. Names that contain ``name`` come first, then names whose
    ``difflib`` similarity is at least 0.6, each group by decreasing similarity.
    """
    target = _normalise(name)
    if not target:
        return []
    matcher = difflib.SequenceMatcher(b=target)
    ranked = []
    for candidate in timm.list_models():
        normalised = _normalise(candidate)
        matcher.set_seq1(normalised)
        score = matcher.ratio()
        contains = target in normalised
        if contains or score >= 0.6:
            ranked.append((not contains, -score, len(candidate), candidate))
    return [candidate for *_, candidate in sorted(ranked)[:limit]]


def unknown_model_message(name: str) -> str:
    """``unknown timm model 'x'. Did you mean ...?`` (or where to find the names)."""
    suggestions = suggest_models(name)
    hint = (
        "Did you mean " + ", ".join(repr(s) for s in suggestions) + "?"
        if suggestions
        else "See timm.list_models() for the names."
    )
    return f"unknown timm model {name!r}. {hint}"


def _use_batch_statistics(model: nn.Module) -> list[str]:
    """Turn off every BatchNorm's running statistics; name the modules that keep others."""
    kept = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
        elif any(getattr(module, b, None) is not None for b in RUNNING_STATISTICS):
            kept.append(f"{name} ({type(module).__name__})")
    return kept


def prepare_for_meta_learning(model: nn.Module) -> list[str]:
    """Change ``model`` in place as the module docstring describes.

    Returns the modules whose running statistics could not be turned off (empty when all is well).
    """
    kept = _use_batch_statistics(model)
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if type(child) is nn.Hardsigmoid:
                setattr(parent, child_name, DoubleBackwardHardSigmoid())
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False
    return kept


class TimmBackbone(Backbone):
    """A timm model (``self.model``) split into body and head the way timm splits it."""

    config_class = TimmConfig
    description = "any timm.list_models() model, pretrained=False, batch-statistics BatchNorm"

    def __init__(self, config: TimmConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        problems = config.check()  # already run at validation for configs read from files
        if problems:
            raise ConfigError([f"{OPTIONS}.{field}: {text}" for field, text in problems.items()])
        self.config = config
        name = config.model_name
        if len(input_shape) != 3:
            raise ConfigError(
                [f"$.backbone: timm models need images of shape (C, H, W), got {input_shape}"]
            )
        try:
            # Exportable mode makes timm choose native activations over its custom-autograd ones,
            # which cannot be differentiated twice.
            with timm.layers.set_layer_config(exportable=True):
                model = timm.create_model(
                    name,
                    pretrained=False,
                    num_classes=num_classes,
                    in_chans=input_shape[0],
                    **config.kwargs,
                )
        except TypeError as error:
            raise ConfigError(
                [f"{OPTIONS}.kwargs: timm.create_model({name!r}) rejected them: {error}"]
            ) from error
        if not isinstance(model.get_classifier(), nn.Module):
            raise ConfigError(
                [f"{OPTIONS}.model_name: {name!r} has several classifier heads; pick another model"]
            )
        kept = prepare_for_meta_learning(model)
        if kept:
            raise ConfigError(
                [
                    f"{OPTIONS}.model_name: {name!r} has norm layers with running statistics "
                    f"that cannot be switched to batch statistics: {', '.join(kept[:3])}"
                ]
            )
        self.model = model
        # The width of the pre-logits features (MobileNetV3's head conv widens them).
        self.num_features = getattr(model, "head_hidden_size", None) or model.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        old = next(self.get_classifier().parameters())
        self.model.reset_classifier(num_classes)
        self.get_classifier().to(device=old.device, dtype=old.dtype)

    def maskable_parameter_names(self) -> list[str]:
        names = {id(p): n for n, p in self.named_parameters()}
        head = {id(p) for p in self.get_classifier().parameters()}
        maskable = []
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight = module.weight
                if isinstance(weight, nn.Parameter) and id(weight) not in head:
                    maskable.append(names[id(weight)])
        return list(dict.fromkeys(maskable))
