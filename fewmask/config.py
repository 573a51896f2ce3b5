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
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import yaml
from cattrs.errors import ClassValidationError, IterableValidationError

from fewmask.errors import ConfigError, FewmaskError
from fewmask.options import (
    check_values,
    converter,
    option,
    render_error,
    structure_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from fewmask.registry import ComponentInfo, Registry


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
    checkpoint_every: int = option(
        1000, ge=1, output_only=True, help="write the checkpoint every this many iterations"
    )
    log_every: int = option(
        10, ge=1, output_only=True, help="write training scalars every this many iterations"
    )
    histogram_every: int = option(
        1000, ge=1, output_only=True, help="write score histograms every this many iterations"
    )
    device: str = option("cpu", help="torch device: cpu, cuda, cuda:1, ...")
    dtype: str = option("float32", choices=("float32", "float64"), help="floating-point precision")
    progress: bool = option(True, output_only=True, help="show a progress bar on stderr")
    engine: str = option(
        "exact",
        choices=("exact", "fast"),
        help="meta-gradient engine: exact = the plain per-task path; fast = fused SGD, fused "
        "BatchNorm double backward, channels_last (same math, different rounding; "
        "docs/performance.md)",
    )
    tune_malloc: bool = option(
        False,
        help="CPU: keep freed memory in glibc's heap instead of returning it to the kernel "
        "(1.8-2x on conv nets; process-wide, higher resident memory)",
    )


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
    masker: ComponentRef | None = option(
        None,
        help="dense or metaticket (default: the objective's own, e.g. metaticket -> metaticket)",
    )
    inner: ComponentRef = option(
        factory=lambda: ComponentRef("sgd"), help="inner-loop optimizer (lr, steps, first_order)"
    )
    objective: ComponentRef = option(
        factory=lambda: ComponentRef("maml"), help="what the outer loop learns: maml or metaticket"
    )
    train: TrainConfig = option(factory=TrainConfig, help="training schedule")
    test_datasets: list[ComponentRef] = option(
        factory=list,
        help="extra (cross-domain) meta-test datasets: their test splits, resized to the model's "
        "input, are evaluated after training",
    )
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


def structure_options(info: ComponentInfo, options: Any, path: str) -> Any:
    """Structure ``options`` into the config class of ``info``; raise one ConfigError if wrong."""
    if info.config_cls is None:
        if options:
            raise ConfigError([f"{path}: {info.kind} '{info.name}' takes no options"])
        return None
    return structure_config(info.config_cls, options, path)


@attrs.frozen
class ResolvedConfig:
    """An experiment config with every component looked up and its options structured."""

    experiment: ExperimentConfig
    components: dict[str, tuple[ComponentInfo, Any]]


def _with_default_names(data: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the default ``name`` of a component given only ``options`` (e.g. by an override)."""
    data = dict(data)
    for field in attrs.fields(ExperimentConfig):
        ref = data.get(field.name)
        if field.name in COMPONENT_FIELDS and isinstance(ref, Mapping) and "name" not in ref:
            if isinstance(field.default, attrs.Factory):
                data[field.name] = {"name": field.default.factory().name, **ref}
    return data


def _with_default_masker_name(data: Mapping[str, Any], registry: Registry) -> Mapping[str, Any]:
    """A masker given without a name (omitted, or only ``options``, e.g. from
    ``-o masker.options.x=1``) is the objective's own masker (``MetaObjective.default_masker``)."""
    masker = data.get("masker") or {}
    default_objective = attrs.fields(ExperimentConfig).objective.default.factory().name
    objective = data.get("objective") or {"name": default_objective}
    if not (
        isinstance(masker, Mapping) and "name" not in masker and isinstance(objective, Mapping)
    ):
        return data
    name = objective.get("name")
    if not isinstance(name, str) or name not in registry.names("objective"):
        return data  # the unknown objective is reported; the masker stays unresolved
    return {
        **data,
        "masker": {"name": registry.get("objective", name).cls.default_masker, **masker},
    }


def parse_experiment(data: Any, source: str | None = None) -> ExperimentConfig:
    """Phase 1: plain data -> :class:`ExperimentConfig` (options stay dicts)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"$: expected a mapping at the top level, got {type(data).__name__}"], source
        )
    try:
        experiment = converter.structure(_with_default_names(data), ExperimentConfig)
    except (ClassValidationError, IterableValidationError, TypeError) as exc:
        raise ConfigError(render_error(exc, "$"), source) from None
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
    problems: list[str] = []
    experiment: ExperimentConfig | None = None
    if isinstance(data, ExperimentConfig):
        data = unstructure(data)
    if isinstance(data, Mapping):
        data = _with_default_masker_name(data, registry)
    try:
        experiment = parse_experiment(data, source)
    except ConfigError as exc:
        problems += exc.problems
    if experiment is not None:
        raw = unstructure(experiment)
    else:
        raw = _with_default_names(data) if isinstance(data, Mapping) else {}
    components = _resolve_components(raw, registry, problems)
    if problems:
        raise ConfigError(problems, source)
    assert experiment is not None
    return ResolvedConfig(experiment, components)


def _resolve_components(
    raw: Mapping[str, Any], registry: Registry, problems: list[str]
) -> dict[str, tuple[ComponentInfo, Any]]:
    """Look up every component reference of plain config data and structure its options.

    Runs even when phase 1 failed, so a typo in a name and one in ``train`` are reported together.
    """
    refs = {field: raw.get(field) for field in COMPONENT_FIELDS}
    defaults = {f.name: f.default for f in attrs.fields(ExperimentConfig)}
    for field, ref in refs.items():
        if ref is None and isinstance(defaults[field], attrs.Factory):
            refs[field] = {"name": defaults[field].factory().name}
    components: dict[str, tuple[ComponentInfo, Any]] = {}
    extra = raw.get("test_datasets")
    for i, ref in enumerate(extra if isinstance(extra, list) else []):
        refs[f"test_datasets[{i}]"] = ref
    for field, ref in refs.items():
        kind = COMPONENT_FIELDS.get(field, "dataset")
        if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
            continue  # phase 1 already reported the shape of this reference
        name = ref["name"]
        if name not in registry.names(kind):
            problems.append(f"$.{field}.name: {registry.unknown_message(kind, name)}")
            continue
        info = registry.get(kind, name)
        try:
            options = structure_options(info, ref.get("options"), f"$.{field}.options")
            components[field] = (info, options)
        except ConfigError as exc:
            problems += exc.problems
    return components


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
    """A ``-o key=value`` value in YAML syntax: ``3``, ``1e-3``, ``[1, 2]``, ``x``."""
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
        raise ConfigError(
            [f"$: expected a mapping at the top level, got {type(data).__name__}"], str(path)
        )
    return data


def apply_overrides(
    data: dict[str, Any],
    overrides: Iterable[str],
    flag: str = "-o",
    example: str = "train.iterations=100",
) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to nested plain data (a new dict is returned).

    ``flag`` and ``example`` only word the error messages."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"{flag} {item!r}: expected key=value, e.g. {example}")
            continue
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    f"{flag} {item!r}: $.{'.'.join(parts[: depth + 1])} is not a mapping"
                )
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
    """JSON-compatible data of a config (a resolved one with all component options spelled out)."""
    data = unstructure(config.experiment if isinstance(config, ResolvedConfig) else config)
    if isinstance(config, ResolvedConfig):
        for field, (_, options) in config.components.items():
            plain = converter.unstructure(options) if options is not None else {}
            if field.startswith("test_datasets["):
                data["test_datasets"][int(field[14:-1])]["options"] = plain
            else:
                data[field]["options"] = plain
    return json.loads(json.dumps(data))  # tuples -> lists


def dump_config(
    config: ExperimentConfig | ResolvedConfig | dict[str, Any], path: str | Path
) -> None:
    """Write a config (or its plain data) as YAML."""
    data = config if isinstance(config, dict) else plain_config(config)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def fields_markdown(cls: type) -> str:
    """A markdown table of an attrs config class: field, type, default, help."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(attrs.resolve_types(cls)):
        default = field.default
        if isinstance(default, attrs.Factory):
            default = default.factory()
            default = default.name if isinstance(default, ComponentRef) else "(see below)"
        kind = field.type.__name__ if isinstance(field.type, type) else str(field.type)
        kind = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", kind).replace("|", "\\|")
        bounds = ", ".join(
            f"{k} {field.metadata[k]}" for k in ("ge", "gt", "le", "lt") if k in field.metadata
        )
        if "choices" in field.metadata:
            bounds = "one of " + ", ".join(map(str, field.metadata["choices"]))
        meaning = field.metadata.get("help", "") + (f" ({bounds})" if bounds else "")
        shown = "(required)" if default is attrs.NOTHING else f"`{default!r}`"
        rows.append(f"| `{field.name}` | `{kind}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


def options_markdown(registry: Registry | None = None) -> str:
    """Every config field: the experiment, training, and each registered component's options."""
    from fewmask.plugins import default_registry

    registry = registry or default_registry()
    parts = [
        "## Experiment (top level)\n",
        fields_markdown(ExperimentConfig),
        "\n## `train`\n",
        fields_markdown(TrainConfig),
    ]
    for info in registry.list():
        field = next(f for f, k in COMPONENT_FIELDS.items() if k == info.kind)
        parts.append(f"\n## `{field}: {{name: {info.name}}}` ({info.provider.distribution})\n\n")
        parts.append(f"{info.description}\n\n")
        parts.append(fields_markdown(info.config_cls) if info.config_cls else "No options.\n")
    return "".join(parts)


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
