"""fewmask-plugin-timm: any timm model as a fewmask backbone.

Registers one backbone, ``timm``; the model is an option, not a registered name::

    backbone:
      name: timm
      options: {model_name: resnet18, kwargs: {drop_path_rate: 0.05}}
"""

from __future__ import annotations

from fewmask import hookimpl
from fewmask_plugin_timm.backbone import (
    DoubleBackwardHardSigmoid,
    TimmBackbone,
    TimmConfig,
    prepare_for_meta_learning,
    suggest_models,
)

__version__ = "0.1.0"


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_backbone("timm", TimmBackbone)


__all__ = [
    "DoubleBackwardHardSigmoid",
    "TimmBackbone",
    "TimmConfig",
    "prepare_for_meta_learning",
    "suggest_models",
]
