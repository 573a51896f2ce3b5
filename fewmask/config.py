"""Experiment configuration: attrs classes, one strict cattrs converter, YAML/TOML files, overrides.

Structuring happens in two phases so every problem is reported at once, before any tensor exists:

1. the file (plus ``-o key=value`` overrides) becomes an :class:`ExperimentConfig` whose component
   references keep their ``options`` as plain dicts;
2. each reference's name is looked up in the registry and its options are structured into the
   component's own config class (:func:`resolve_config`).

Errors are lines ``$.path: problem`` collected into one :class:`fewmask.errors.ConfigError`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import cattrs
import yaml
from cattrs.errors import ClassValidationError, IterableValidationError

from fewmask.errors import ConfigError, FewmaskError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from fewmask.registry import ComponentInfo, Registry


def option(default: Any = attrs.NOTHING, *, help: str, factory: Any = None, **bounds: Any) -> Any:
    """An attrs field with a help text and checks (``ge``, ``gt``, ``le``, ``lt``, ``choices``).

    The checks run in :func:`check_values` so that every violation is reported together.
    """
    unknown = set(bounds) - {"ge", "gt", "le", "lt", "choices"}
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    metadata = {"help": help, **bounds}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


def _strict(kind: type, accepts: tuple[type, ...], name: str):
    def structure(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


def make_converter() -> cattrs.Converter:
    """The converter: unknown keys are errors; no silent ``"3" -> 3`` or ``3.7 -> 3``."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, (int,), "an integer"))
    converter.register_structure_hook(float, _strict(float, (int, float), "a number"))
    converter.register_structure_hook(bool, _strict(bool, (bool,), "true or false"))
    converter.register_structure_hook(str, _strict(str, (str,), "a string"))
    converter.register_structure_hook_func(
        lambda t: t == dict[str, Any], lambda v, _: _require_mapping(v)
    )
    return converter


def _require_mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of options, got {type(value).__name__} {value!r}")
    return dict(value)


converter = make_converter()


@attrs.frozen
class ComponentRef:
    """A component chosen by name, with the options of its config class."""

    name: str = option(help="registered name of the component (see `fewmask plugins`)")
    options: dict[str, Any] = option(factory=dict, help="fields of the component's config class")


@attrs.frozen
class TrainConfig:
    """How long and how to meta-train, validate, test and checkpoint."""

    iterations: int = option(30000, ge=1, help="outer (meta) iterations")
    meta_batch_size: int = option(4, ge=1, help="tasks per outer iteration (B)")
    val_every: int = option(1000, ge=1, help="validate every this many iterations")
    val_episodes: int = option(200, ge=0, help="validation tasks (fresh each time); 0 disables")
    test_episodes: int = option(1000, ge=1, help="meta-test tasks, fixed by the seed")
    checkpoint_every: int = option(1000, ge=1, help="write the checkpoint every this many iterations")
    log_every: int = option(10, ge=1, help="write training scalars every this many iterations")
    histogram_every: int = option(1000, ge=1, help="write score histograms every this many iterations")
    device: str = option("cpu", help="torch device: cpu, cuda, cuda:1, ...")
    dtype: str = option("float32", choices=("float32", "float64"), help="floating-point precision")
    progress: bool = option(True, help="show a progress bar on stderr")


@attrs.frozen
class ExperimentConfig:
    """A whole experiment: the six components, the data and the training schedule."""

    backbone: ComponentRef = option(help="network (e.g. omniglot_mlp, mlp5)")
    dataset: ComponentRef = option(
        factory=lambda: ComponentRef("glyphs"), help="data source with train/val/test splits"
    )
    sampler: ComponentRef = option(
        factory=lambda: ComponentRef("episodic"), help="episode sampler (ways, shots, queries)"
    )
    masker: ComponentRef = option(
        factory=lambda: ComponentRef("dense"), help="dense (MAML family) or metaticket"
    )
    inner: ComponentRef = option(
        factory=lambda: ComponentRef("sgd"), help="inner-loop optimizer (lr, steps, first_order)"
    )
    objective: ComponentRef = option(
        factory=lambda: ComponentRef("maml"), help="what the outer loop learns: maml or metaticket"
    )
    train: TrainConfig = option(factory=TrainConfig, help="training schedule")
    seed: int = option(1, ge=0, help="seed of weights, scores and every episode stream")
    run_dir: str = option("runs/default", help="where checkpoints, logs and results are written")


COMPONENT_FIELDS: dict[str, str] = {
    "backbone": "backbone",
    "dataset": "dataset",
    "sampler": "sampler",
    "masker": "masker",
    "inner": "inner_optimizer",
    "objective": "objective",
}
"""Config field -> registry kind."""


def _render(exc: Exception, path: str) -> list[str]:
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        lines = cattrs.transform_error(exc, path=path, format_exception=_format_exception)
        out = []
        for line in lines:
            message, _, where = line.rpartition(" @ ")
            out.append(f"{where}: {message}")
        return out
    return [f"{path}: {exc}"]


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def check_values(obj: Any, path: str = "$") -> list[str]:
    """Range and choice problems of an attrs config object (recursively), as ``$.path: problem``."""
    problems: list[str] = []
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        where = f"{path}.{field.name}"
        if attrs.has(type(value)):
            problems += check_values(value, where)
            continue
        meta = field.metadata
        if value is None or isinstance(value, bool):
            continue
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}")
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{where}: must be finite, got {value}")
            for key, test, word in (
                ("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"),
            ):
                if key in meta and not test(value, meta[key]):
                    problems.append(f"{where}: must be {word} {meta[key]}, got {value}")
    return problems


def structure_options(info: ComponentInfo, options: Any, path: str) -> Any:
    """Structure ``options`` into the config class of ``info``; raise one ConfigError if wrong."""
    problems: list[str] = []
    config = None
    if info.config_cls is None:
        if options:
            problems.append(f"{path}: {info.kind} '{info.name}' takes no options")
        return None
    try:
        config = converter.structure(_require_mapping(options), info.config_cls)
    except (ClassValidationError, IterableValidationError, TypeError) as exc:
        problems += _render(exc, path)
    if config is not None:
        problems += check_values(config, path)
    if problems:
        raise ConfigError(problems)
    return config


@attrs.frozen
class ResolvedConfig:
    """An experiment config with every component looked up and its options structured."""

    experiment: ExperimentConfig
    components: dict[str, tuple[ComponentInfo, Any]]


def parse_experiment(data: Any, source: str | None = None) -> ExperimentConfig:
    """Phase 1: plain data -> :class:`ExperimentConfig` (options stay dicts)."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"$: expected a mapping at the top level, got {type(data).__name__}"], source)
    try:
        experiment = converter.structure(dict(data), ExperimentConfig)
    except (ClassValidationError, IterableValidationError, TypeError) as exc:
        raise ConfigError(_render(exc, "$"), source) from None
    problems = check_values(experiment)
    if problems:
        raise ConfigError(problems, source)
    return experiment


def resolve_config(
    data: Any, registry: Registry | None = None, source: str | None = None
) -> ResolvedConfig:
    """Both phases: validate everything, report every problem at once, allocate nothing."""
    from fewmask.plugins import default_registry

    registry = registry or default_registry()
    experiment = data if isinstance(data, ExperimentConfig) else parse_experiment(data, source)
    problems: list[str] = []
    components: dict[str, tuple[ComponentInfo, Any]] = {}
    for field, kind in COMPONENT_FIELDS.items():
        ref: ComponentRef = getattr(experiment, field)
        if ref.name not in registry.names(kind):
            problems.append(f"$.{field}.name: {registry.unknown_message(kind, ref.name)}")
            continue
        info = registry.get(kind, ref.name)
        try:
            components[field] = (info, structure_options(info, ref.options, f"$.{field}.options"))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, source)
    return ResolvedConfig(experiment, components)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; this loader reads it as the float users mean."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A ``-o key=value`` value: YAML scalar/list/mapping syntax (``3``, ``1e-3``, ``[1, 2]``, ``x``)."""
    return yaml.load(text, Loader=_Loader)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file into plain data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"$: config file {str(path)!r} does not exist"], str(path))
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"$: cannot parse {path.name}: {exc}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"$: expected a mapping at the top level, got {type(data).__name__}"], str(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to nested plain data (a new dict is returned)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"-o {item!r}: expected key=value, e.g. train.iterations=100")
            continue
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"-o {item!r}: $.{'.'.join(parts[:depth + 1])} is not a mapping")
                break
            node = child
        else:
            node[parts[-1]] = parse_value(text)
    if problems:
        raise ConfigError(problems)
    return data


def load_config(
    path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None
) -> ResolvedConfig:
    """Read, override, validate and resolve a config file in one go."""
    data = apply_overrides(read_config_file(path), overrides)
    return resolve_config(data, registry, source=str(path))


def unstructure(config: ExperimentConfig) -> dict[str, Any]:
    """Plain data for YAML/JSON (the inverse of :func:`parse_experiment`)."""
    return converter.unstructure(config)


def plain_config(config: ExperimentConfig | ResolvedConfig) -> dict[str, Any]:
    """JSON-compatible data of a config; a resolved one has every component's options spelled out."""
    data = unstructure(config.experiment if isinstance(config, ResolvedConfig) else config)
    if isinstance(config, ResolvedConfig):
        for field, (_, options) in config.components.items():
            data[field]["options"] = converter.unstructure(options) if options is not None else {}
    return json.loads(json.dumps(data))  # tuples -> lists


def dump_config(config: ExperimentConfig | ResolvedConfig | dict[str, Any], path: str | Path) -> None:
    """Write a config (or its plain data) as YAML."""
    data = config if isinstance(config, dict) else plain_config(config)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


__all__ = [
    "ComponentRef",
    "ConfigError",
    "ExperimentConfig",
    "FewmaskError",
    "ResolvedConfig",
    "TrainConfig",
    "apply_overrides",
    "check_values",
    "converter",
    "dump_config",
    "load_config",
    "option",
    "parse_experiment",
    "plain_config",
    "read_config_file",
    "resolve_config",
    "structure_options",
    "unstructure",
]
