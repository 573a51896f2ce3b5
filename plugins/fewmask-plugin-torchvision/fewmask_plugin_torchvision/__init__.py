"""fewmask-plugin-torchvision: any torchvision classification model as a fewmask backbone.

Registers one backbone, ``torchvision``; the model is an option, not a registered name::

    backbone:
      name: torchvision
      options: {model: resnet18, kwargs: {zero_init_residual: true}}
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_torchvision.backbone import (
    TorchvisionBackbone,
    TorchvisionConfig,
    classification_models,
    suggest_models,
)

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_backbone("torchvision", TorchvisionBackbone)


__all__ = ["TorchvisionBackbone", "TorchvisionConfig", "classification_models", "suggest_models"]
