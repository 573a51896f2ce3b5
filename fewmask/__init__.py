"""fewmask: gradient-based meta-learning of sparse subnetworks (Meta-ticket, MAML family).

This package root is the public API: everything a user or a plugin needs is importable from
here, and plugins import nothing else from fewmask (``import-linter`` checks it)::

    from fewmask import hookimpl, option, component                  # plugin authors
    from fewmask import Backbone, Masker, InnerOptimizer, MetaObjective, EpisodeSampler
    from fewmask import Trainer, TrainConfig, build_trainer, create, load_config
    from fewmask import as_backbone                                   # any nn.Module
    from fewmask import export_run, load_export, adapt                 # take a subnetwork out

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
from fewmask.builtins.wrapped import WrappedBackbone, as_backbone
from fewmask.config import ExperimentConfig, TrainConfig
from fewmask.config.resolve import ResolvedConfig
from fewmask.datasets.base import CachedSource, CachedSourceConfig
from fewmask.engine import Engine, EngineOptions, StepResult
from fewmask.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DownloadError,
    DuplicateComponentError,
    ExportError,
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
from fewmask.export import Subnetwork, adapt, export_run, load_export
from fewmask.factory import RunResults
from fewmask.interfaces import (
    Backbone,
    DatasetSource,
    Episode,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Launcher,
    Masker,
    MetaObjective,
    Params,
    SGDSteps,
)
from fewmask.options import ComponentRef, component, option
from fewmask.registry import ComponentInfo, Registry
from fewmask.registry.hookspecs import hookimpl
from fewmask.runtime.process import Process
from fewmask.runtime.run import Run
from fewmask.session import (
    build_trainer,
    create,
    default_registry,
    list_components,
    load_config,
    load_registry,
    reset_default_registry,
    resolve,
    train,
)
from fewmask.training.evaluation import MetaTestResult, meta_test
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
    "DownloadError",
    "DuplicateComponentError",
    "Engine",
    "EngineOptions",
    "Episode",
    "ExportError",
    "EpisodeSampler",
    "ExperimentConfig",
    "FewShotDataset",
    "FewmaskError",
    "InnerOptimizer",
    "Launcher",
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
    "Subnetwork",
    "TrainConfig",
    "Trainer",
    "UnknownComponentError",
    "WrappedBackbone",
    "__version__",
    "as_backbone",
    "adapt",
    "build_outer_optimizer",
    "build_trainer",
    "component",
    "create",
    "export_run",
    "default_registry",
    "hookimpl",
    "list_components",
    "load_config",
    "load_export",
    "load_registry",
    "option",
    "reset_default_registry",
    "resolve",
    "train",
    "meta_test",
    "MetaTestResult",
    "Process",
    "Run",
    "RunResults",
]
