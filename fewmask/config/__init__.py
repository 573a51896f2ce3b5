"""A run's config: its schema, files read within bounds, ``-o`` overrides, and resolution.

Text -> plain data (:mod:`.files`, :mod:`.overrides`) -> :class:`ExperimentConfig` (phase 1,
:mod:`.schema`) -> :class:`ResolvedConfig` (phase 2, :mod:`.resolve`, against a registry), once.
Plain data is made again only for storage (:func:`plain_config`).
"""

from fewmask.config.files import config_yaml, dump_config, read_config_file
from fewmask.config.overrides import apply_overrides, parse_value
from fewmask.config.reference import component_markdown, fields_markdown, options_markdown
from fewmask.config.resolve import (
    ResolvedComponent,
    ResolvedConfig,
    plain_config,
    resolve_component,
    resolve_config,
)
from fewmask.config.schema import (
    COMPONENT_FIELDS,
    ExperimentConfig,
    TrainConfig,
    parse_experiment,
    unstructure,
)
from fewmask.options import ComponentRef

__all__ = [
    "COMPONENT_FIELDS",
    "ComponentRef",
    "ExperimentConfig",
    "ResolvedComponent",
    "ResolvedConfig",
    "TrainConfig",
    "apply_overrides",
    "component_markdown",
    "config_yaml",
    "dump_config",
    "fields_markdown",
    "options_markdown",
    "parse_experiment",
    "parse_value",
    "plain_config",
    "read_config_file",
    "resolve_component",
    "resolve_config",
    "unstructure",
]
