"""Checks of parts composed in Python, made when a Trainer is built (a config file gets the same
through ``fewmask validate``; these cover objects handed straight to the Trainer)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from fewmask.errors import ConfigError
from fewmask.options import check_values


def check_train_config(train: object) -> None:
    """Bounds and choices of a ``TrainConfig`` built in Python (``iterations=0`` is refused)."""
    problems = check_values(train, "$.train")
    if problems:
        raise ConfigError(problems)


def head_width(backbone: nn.Module) -> int | None:
    """The number of classes a backbone predicts: its ``num_classes`` attribute, else its
    Linear classifier's outputs; ``None`` when neither says."""
    recorded = getattr(backbone, "num_classes", None)
    if isinstance(recorded, int):
        return recorded
    get_classifier = getattr(backbone, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return head.out_features if isinstance(head, nn.Linear) else None


def check_backbone_fits(backbone: nn.Module, image_shape: Sequence[int], ways: int | None) -> None:
    """The backbone was built for these images (its recorded ``input_shape``, if any) and predicts
    as many classes as an episode has (``ways``)."""
    problems = []
    built_for = getattr(backbone, "input_shape", None)
    if built_for is not None and tuple(built_for) != tuple(image_shape):
        problems.append(
            f"$.backbone: it was built for images of shape {tuple(built_for)}, but the data has "
            f"{tuple(image_shape)}; build it with input_shape={tuple(image_shape)}"
        )
    width = head_width(backbone)
    if ways is not None and width is not None and width != ways:
        problems.append(
            f"$.backbone: its head predicts {width} classes, but the sampler draws {ways}-way "
            f"episodes; build it with num_classes={ways}"
        )
    if problems:
        raise ConfigError(problems)
