"""fewmask's own components, registered through the same hook as any plugin."""

from __future__ import annotations

import fewmask.datasets as disk_datasets
from fewmask.builtins import convnets
from fewmask.builtins.backbones import MLP, MLP5Config, OmniglotMLPConfig
from fewmask.builtins.inner import SGDInner, SGDInnerConfig
from fewmask.builtins.maskers import DenseMasker
from fewmask.builtins.objectives import MAMLConfig, MAMLObjective
from fewmask.builtins.samplers import EpisodicConfig, EpisodicSampler
from fewmask.hookspecs import hookimpl


@hookimpl
def fewmask_register(registry) -> None:
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
    registry.add_masker("dense", DenseMasker, description="no mask (MAML family)")
    registry.add_inner_optimizer(
        "sgd",
        SGDInner,
        config=SGDInnerConfig,
        description="differentiable SGD steps on the support set",
    )
    registry.add_objective(
        "maml",
        MAMLObjective,
        config=MAMLConfig,
        description="meta-learn the initial weights (MAML; first-order via inner.first_order)",
    )
    registry.add_sampler(
        "episodic",
        EpisodicSampler,
        config=EpisodicConfig,
        description="N-way K-shot Q-query episodes from in-memory tensors",
    )
