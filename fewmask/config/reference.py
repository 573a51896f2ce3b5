"""The config reference as markdown: ``fewmask options`` and docs/config.md."""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

import attrs

from fewmask.config.schema import COMPONENT_FIELDS, ExperimentConfig, TrainConfig
from fewmask.options import ComponentRef

if TYPE_CHECKING:
    from fewmask.registry import Registry


def fields_markdown(cls: type) -> str:
    """A markdown table of an attrs config class: field, type, default, help."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):
            default = default.factory()
            if isinstance(default, ComponentRef):
                default = default.name
            elif attrs.has(type(default)):
                default = f"(section `{field.name}`)"
        kind = type_name(written_annotation(cls, field.name, field.type))
        bounds = ", ".join(
            f"{k} {field.metadata[k]}" for k in ("ge", "gt", "le", "lt") if k in field.metadata
        )
        if "choices" in field.metadata:
            bounds = "one of " + ", ".join(map(str, field.metadata["choices"]))
        meaning = field.metadata.get("help", "") + (f" ({bounds})" if bounds else "")
        if default is attrs.NOTHING:
            shown = "(required)"
        elif isinstance(default, str) and default.startswith("(section"):
            shown = default
        else:
            shown = f"`{default!r}`"
        rows.append(f"| `{field.name}` | `{kind}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


def written_annotation(cls: type, name: str, default: Any) -> Any:
    """The annotation of field ``name`` as written in ``cls`` or a base class (source text under
    ``from __future__ import annotations``). attrs' ``field.type`` is replaced by the evaluated
    type once anything (cattrs, for one) resolves the class, and evaluated types print
    differently across Pythons (``Optional[X]`` on 3.10, ``X | None`` later)."""
    for klass in cls.__mro__:
        written = inspect.get_annotations(klass)
        if name in written:
            return written[name]
    return default


def type_name(annotation: Any) -> str:
    """A field's type as written in its class (``int | None``), the same on every Python.

    Under ``from __future__ import annotations`` attrs keeps the source text; a class without
    it gives a type object, rendered without module prefixes.
    """
    if isinstance(annotation, str):
        text = annotation
    elif isinstance(annotation, type):
        text = annotation.__name__
    else:
        text = re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(annotation))
    return text.replace("|", "\\|")


def options_markdown(registry: Registry) -> str:
    """Every config field: the experiment, training, and each registered component's options."""
    parts = [
        "## Experiment (top level)\n",
        fields_markdown(ExperimentConfig),
        "\n## `train`\n",
        fields_markdown(TrainConfig),
    ]
    parts += ["\n" + component_markdown(info) for info in registry.list()]
    return "".join(parts)


def component_markdown(info: Any) -> str:
    """One registered component's section of :func:`options_markdown`: heading, description,
    options table (``info`` is a :class:`fewmask.registry.ComponentInfo`)."""
    options = fields_markdown(info.config_cls) if info.config_cls else "No options.\n"
    field = next((f for f, k in COMPONENT_FIELDS.items() if k == info.kind), None)
    chosen = f"{field}: {{name: {info.name}}}"
    if field is None:  # not a config field: a launcher, chosen on the command line
        chosen = f"--{info.kind} {info.name} [-l KEY=VALUE ...]"
    heading = f"## `{chosen}` ({info.provider.distribution})"
    return f"{heading}\n\n{info.description}\n\n{options}"
