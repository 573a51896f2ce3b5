"""Phase 2 of config validation: look every component up in a registry and check its options.

:func:`resolve_config` turns plain config data (or an :class:`ExperimentConfig`) into a
:class:`ResolvedConfig` in which every component reference, nested ones included (see
:func:`fewmask.options.component`), is a :class:`ResolvedComponent`: the registry entry plus its
structured, checked options. Every problem of phase 1 and phase 2 comes in one ConfigError, and
nothing is allocated; :meth:`ResolvedComponent.build` then constructs the component.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from fewmask.config.schema import (
    COMPONENT_FIELDS,
    ExperimentConfig,
    parse_experiment,
    unstructure,
    with_default_names,
)
from fewmask.errors import ConfigError
from fewmask.interfaces import Masker
from fewmask.options import ComponentRef, component_fields, converter, structure_config
from fewmask.registry import ComponentInfo, Registry


@attrs.frozen
class ResolvedComponent:
    """A registered component with its options structured into its config class.

    Attributes:
        info: the registry entry (class, config class, provider).
        options: an instance of ``info.config_cls`` (``None`` for a component without options).
        nested: the resolved component references among the options, by field name.
    """

    info: ComponentInfo
    options: Any
    nested: dict[str, ResolvedComponent] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        return self.info.name

    def build(self, **kwargs: Any) -> Any:
        """The component: nested components are built first and passed by field name."""
        children = {field: child.build() for field, child in self.nested.items()}
        return self.info.build(self.options, **children, **kwargs)

    def plain(self) -> dict[str, Any]:
        """``{name, options}`` as plain data, nested references spelled out in full."""
        options = converter.unstructure(self.options) if self.options is not None else {}
        for field, child in self.nested.items():
            options[field] = child.plain()
        return {"name": self.name, "options": options}


@attrs.frozen
class ResolvedConfig:
    """An experiment config with every component looked up and its options structured."""

    experiment: ExperimentConfig
    components: dict[str, ResolvedComponent]
    test_datasets: list[ResolvedComponent] = attrs.field(factory=list)


def structure_options(info: ComponentInfo, options: Any, path: str) -> Any:
    """Structure ``options`` into the config class of ``info``; raise one ConfigError if wrong."""
    if info.config_cls is None:
        if options:
            raise ConfigError([f"{path}: {info.kind} '{info.name}' takes no options"])
        return None
    return structure_config(info.config_cls, options, path)


def resolve_component(
    registry: Registry, kind: str, ref: Any, path: str, problems: list[str]
) -> ResolvedComponent | None:
    """Look ``ref`` (``{name, options}`` data, or a name) up as a ``kind``; problems go to
    ``problems``."""
    if isinstance(ref, str):
        ref = {"name": ref}
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str):
        return None  # phase 1 reports the shape of a reference
    name = ref["name"]
    if name not in registry.names(kind):
        problems.append(f"{path}.name: {registry.unknown_message(kind, name)}")
        return None
    info = registry.get(kind, name)
    try:
        options = structure_options(info, ref.get("options"), f"{path}.options")
    except ConfigError as exc:
        problems += exc.problems
        return None
    nested = {}
    for field, child_kind in component_fields(info.config_cls).items():
        child_ref = getattr(options, field)
        child = resolve_component(
            registry,
            child_kind,
            {"name": child_ref.name, "options": child_ref.options},
            f"{path}.options.{field}",
            problems,
        )
        if child is not None:
            nested[field] = child
    return ResolvedComponent(info, options, nested)


def with_default_masker(data: Mapping[str, Any], registry: Registry) -> Mapping[str, Any]:
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


def resolve_config(data: Any, registry: Registry, source: str | None = None) -> ResolvedConfig:
    """Both phases: validate everything, report every problem at once, allocate nothing."""
    problems: list[str] = []
    experiment: ExperimentConfig | None = None
    if isinstance(data, ExperimentConfig):
        data = unstructure(data)
    if isinstance(data, Mapping):
        data = with_default_masker(data, registry)
    try:
        experiment = parse_experiment(data, source)
    except ConfigError as exc:
        problems += exc.problems
    if experiment is not None:
        raw = unstructure(experiment)
    else:  # still look the names up, so a typo in a name and one in `train` come together
        raw = with_default_names(data) if isinstance(data, Mapping) else {}
    defaults = {f.name: f.default for f in attrs.fields(ExperimentConfig)}
    components = {}
    for field, kind in COMPONENT_FIELDS.items():
        ref = raw.get(field)
        if ref is None and isinstance(defaults[field], attrs.Factory):
            ref = {"name": defaults[field].factory().name}
        resolved = resolve_component(registry, kind, ref, f"$.{field}", problems)
        if resolved is not None:
            components[field] = resolved
    extra = raw.get("test_datasets")
    test_datasets = [
        resolve_component(registry, "dataset", ref, f"$.test_datasets[{i}]", problems)
        for i, ref in enumerate(extra if isinstance(extra, list) else [])
    ]
    problems += pairing_problems(components)
    if experiment is not None:
        parts = [("$.train", experiment.train)] + [
            (f"$.{field}.options", c.options) for field, c in components.items()
        ]
        parts += [
            (f"$.test_datasets[{i}].options", c.options)
            for i, c in enumerate(test_datasets)
            if c is not None
        ]
        problems += dtype_range_problems(parts, experiment.train.dtype)
    if problems:
        raise ConfigError(problems, source)
    assert experiment is not None
    return ResolvedConfig(experiment, components, test_datasets)  # type: ignore[arg-type]


def dtype_range_problems(parts: list[tuple[str, Any]], dtype: str) -> list[str]:
    """Every number among the options (nested ones and lists included) that the run's
    floating-point type cannot hold: a learning rate of 1e39 is ``inf`` in float32."""
    import torch

    largest = torch.finfo(getattr(torch, dtype, torch.float32)).max
    problems: list[str] = []
    todo = list(parts)
    while todo:
        path, value = todo.pop()
        if attrs.has(type(value)):
            todo += [
                (f"{path}.{f.name}", getattr(value, f.name)) for f in attrs.fields(type(value))
            ]
        elif isinstance(value, ComponentRef):
            todo.append((f"{path}.options", value.options))
        elif isinstance(value, Mapping):
            todo += [(f"{path}.{k}", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            todo += [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, float) and math.isfinite(value) and abs(value) > largest:
            problems.append(
                f"{path}: {value:g} is beyond the range of {dtype} (at most {largest:.4g} in "
                f"magnitude), which the run computes in; use a smaller value"
                + ("" if dtype == "float64" else " (or train.dtype: float64)")
            )
    return sorted(problems)


def pairing_problems(components: Mapping[str, ResolvedComponent]) -> list[str]:
    """Components that cannot work together, known from their classes alone: an objective that
    meta-learns mask scores (``MetaObjective.needs_scores``) with a masker that has none."""
    objective, masker = components.get("objective"), components.get("masker")
    if objective is None or masker is None or not objective.info.cls.needs_scores:
        return []
    if has_scores(masker):
        return []
    return [
        f"$.masker.name: objective '{objective.name}' meta-learns mask scores, but masker "
        f"'{masker.name}' has none; use a masker with scores (e.g. metaticket), or leave "
        "masker out to get the objective's own"
    ]


def has_scores(masker: ResolvedComponent) -> bool:
    """Whether a masker may have scores to learn: its class defines ``meta_parameters``, and a
    wrapper (a masker whose options name other maskers) has them if a wrapped one does."""
    wrapped = [child for child in masker.nested.values() if child.info.kind == "masker"]
    if wrapped:
        return any(has_scores(child) for child in wrapped)
    return masker.info.cls.meta_parameters is not Masker.meta_parameters


def plain_config(config: ExperimentConfig | ResolvedConfig) -> dict[str, Any]:
    """JSON-compatible data of a config (a resolved one with all component options spelled out)."""
    if isinstance(config, ExperimentConfig):
        return json.loads(json.dumps(unstructure(config)))
    data = unstructure(config.experiment)
    for field, resolved in config.components.items():
        data[field] = resolved.plain()
    data["test_datasets"] = [resolved.plain() for resolved in config.test_datasets]
    return json.loads(json.dumps(data))  # tuples -> lists
