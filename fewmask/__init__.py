"""fewmask: gradient-based meta-learning of sparse subnetworks (Meta-ticket, MAML family).

This package root is the public API: everything a user or a plugin needs is importable from
here, and plugins import nothing else from fewmask (``import-linter`` checks it)::

    from fewmask import hookimpl, option, component                  # plugin authors
    from fewmask import Backbone, Masker, InnerOptimizer, MetaObjective, EpisodeSampler
    from fewmask import Trainer, TrainConfig, build_trainer, create, load_config

The functions that need a registry (``create``, ``build_trainer``, ...) use the process's
default session unless given ``registry=`` (see :mod:`fewmask.session`).
"""

from __future__ import annotations

from fewmask.builtins.inner import SGDInner, SGDInnerConfig
from fewmask.builtins.outer import (
    OuterConfig,
    OuterLoopObjective,
    ScheduledLR,
    build_outer_optimizer,
)
from fewmask.config import ExperimentConfig, TrainConfig
from fewmask.config.resolve import ResolvedConfig
from fewmask.datasets.base import CachedSource, CachedSourceConfig
from fewmask.engine import Engine, EngineOptions, StepResult
from fewmask.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DuplicateComponentError,
    FewmaskError,
    FewmaskWarning,
    GraphCaptureError,
    NonFiniteError,
    PluginLoadError,
    ResourceError,
    RunFileError,
    RunFolderError,
    RunLockedError,
    UnknownComponentError,
)
from fewmask.interfaces import (
    Backbone,
    DatasetSource,
    Episode,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Masker,
    MetaObjective,
    Params,
    SGDSteps,
)
from fewmask.options import ComponentRef, component, option
from fewmask.registry import ComponentInfo, Registry
from fewmask.registry.hookspecs import hookimpl
from fewmask.session import (
    build_trainer,
    create,
    default_registry,
    list_components,
    load_config,
    load_registry,
    reset_default_registry,
    resolve,
)
from fewmask.training.trainer import Trainer
from fewmask.version import __version__

__all__ = [
    "Backbone",
    "CachedSource",
    "CachedSourceConfig",
    "CheckpointError",
    "ComponentInfo",
    "ComponentRef",
    "ConfigError",
    "DatasetError",
    "DatasetSource",
    "DuplicateComponentError",
    "Engine",
    "EngineOptions",
    "Episode",
    "EpisodeSampler",
    "ExperimentConfig",
    "FewShotDataset",
    "FewmaskError",
    "InnerOptimizer",
    "Masker",
    "MetaObjective",
    "GraphCaptureError",
    "NonFiniteError",
    "FewmaskWarning",
    "ResourceError",
    "RunFolderError",
    "RunFileError",
    "RunLockedError",
    "OuterConfig",
    "OuterLoopObjective",
    "Params",
    "PluginLoadError",
    "Registry",
    "ResolvedConfig",
    "SGDInner",
    "SGDInnerConfig",
    "SGDSteps",
    "ScheduledLR",
    "StepResult",
    "TrainConfig",
    "Trainer",
    "UnknownComponentError",
    "__version__",
    "build_outer_optimizer",
    "build_trainer",
    "component",
    "create",
    "default_registry",
    "hookimpl",
    "list_components",
    "load_config",
    "load_registry",
    "option",
    "reset_default_registry",
    "resolve",
]
