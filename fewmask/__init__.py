"""fewmask: gradient-based meta-learning of sparse subnetworks (Meta-ticket, MAML family).

Public API::

    from fewmask import hookimpl                      # for plugin authors
    from fewmask import Trainer, build_trainer, create, load_config, list_components
    from fewmask import Backbone, Masker, InnerOptimizer, MetaObjective, EpisodeSampler
"""

from __future__ import annotations

__version__ = "0.1.0"

from fewmask.config import ComponentRef, ExperimentConfig, TrainConfig, load_config, option
from fewmask.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DuplicateComponentError,
    FewmaskError,
    NonFiniteError,
    PluginLoadError,
    UnknownComponentError,
)
from fewmask.factory import build_trainer, create
from fewmask.hookspecs import hookimpl
from fewmask.interfaces import (
    Backbone,
    DatasetSource,
    Episode,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Masker,
    MetaObjective,
)
from fewmask.plugins import default_registry, load_registry
from fewmask.trainer import Trainer


def list_components(kind: str | None = None) -> list[str]:
    """Registered component names (of one kind, or ``kind:name`` for all kinds)."""
    infos = default_registry().list(kind)
    return [info.name if kind else f"{info.kind}:{info.name}" for info in infos]


__all__ = [
    "Backbone",
    "CheckpointError",
    "ComponentRef",
    "ConfigError",
    "DatasetError",
    "DatasetSource",
    "DuplicateComponentError",
    "Episode",
    "EpisodeSampler",
    "ExperimentConfig",
    "FewShotDataset",
    "FewmaskError",
    "InnerOptimizer",
    "Masker",
    "MetaObjective",
    "NonFiniteError",
    "PluginLoadError",
    "TrainConfig",
    "Trainer",
    "UnknownComponentError",
    "__version__",
    "build_trainer",
    "create",
    "default_registry",
    "hookimpl",
    "list_components",
    "load_config",
    "load_registry",
    "option",
]
