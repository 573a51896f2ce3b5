"""fewmask's own components, registered through the same hook as any plugin."""

from __future__ import annotations

import fewmask.datasets as disk_datasets
from fewmask.builtins import convnets, launchers
from fewmask.builtins.backbones import MLP, MLP5Config, OmniglotMLPConfig
from fewmask.builtins.inner import SGDInner
from fewmask.builtins.maskers import DenseMasker
from fewmask.builtins.objectives import MAMLObjective
from fewmask.builtins.samplers import EpisodicSampler
from fewmask.builtins.structured import StructuredMasker
from fewmask.registry.hookspecs import hookimpl


@hookimpl
def fewmask_register(registry) -> None:
    # One MLP class with two configs: these two name their config and description here; every
    # other class declares its own (``config_class``, ``description``).
    registry.add_backbone(
        "omniglot_mlp",
        MLP,
        config=OmniglotMLPConfig,
        description="MLP 784-256-128-64-64 (x width) with BatchNorm, for 28x28 images",
    )
    registry.add_backbone(
        "mlp5",
        MLP,
        config=MLP5Config,
        description="the paper's 5-layer MLP 3072-1024-512-256-128 with BatchNorm, for 32x32x3",
    )
    convnets.register(registry)
    disk_datasets.register(registry)
    registry.add_masker("dense", DenseMasker)
    registry.add_masker("structured", StructuredMasker)
    registry.add_inner_optimizer("sgd", SGDInner)
    registry.add_objective("maml", MAMLObjective)
    registry.add_sampler("episodic", EpisodicSampler)
    launchers.register(registry)
