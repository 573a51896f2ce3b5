"""Config fields and their checks: ``option()``, the strict converter, error rendering.

A leaf module: it imports nothing from fewmask but :mod:`fewmask.errors`, so components (and
plugins) can declare their config classes without pulling in the registry or the config files.

A config class may also define ``check(self) -> dict[str, str]``: problems that involve several
fields or need computation (e.g. a WRN depth of the form 6n+4), as ``{field: problem}`` (``""``
for the class as a whole). :func:`check_values` reports them with the field's path, so
``fewmask validate`` rejects them before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from fewmask.errors import ConfigError, closest_name


def option(
    default: Any = attrs.NOTHING,
    *,
    help: str,
    factory: Any = None,
    output_only: bool = False,
    **bounds: Any,
) -> Any:
    """An attrs field with a help text and checks (``ge``, ``gt``, ``le``, ``lt``, ``choices``).

    The checks run in :func:`check_values` so that every violation is reported together.
    ``output_only`` marks a field that changes what is written and when, never the numbers.
    """
    unknown = set(bounds) - {"ge", "gt", "le", "lt", "choices"}
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    metadata = {"help": help, "output_only": output_only, **bounds}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


@attrs.frozen
class ComponentRef:
    """A component chosen by name, with the options of its config class.

    In a config file ``{name: metaticket, options: {...}}``, or just ``metaticket``.
    """

    name: str = option(help="registered name of the component (see `fewmask plugins`)")
    options: dict[str, Any] = option(factory=dict, help="fields of the component's config class")


def component(kind: str, default: str | None = None, *, help: str) -> Any:
    """A config field that names another registered component of ``kind``, with its options.

    Written ``{name: ..., options: {...}}`` in a config. The factory resolves it like a
    top-level component (so ``fewmask validate`` checks its name and options under this field's
    path) and passes the built component to the owner's constructor as a keyword argument of
    the field's name: ``field: ComponentRef = component("masker", "metaticket", help=...)``
    makes ``cls(config, field=<built masker>)``.
    """
    metadata = {"help": help, "output_only": False, "component": kind}
    if default is None:
        return attrs.field(metadata=metadata)
    return attrs.field(factory=lambda: ComponentRef(default), metadata=metadata)


def component_fields(cls: type) -> dict[str, str]:
    """``{field name: component kind}`` of the :func:`component` fields of a config class."""
    if cls is None or not attrs.has(cls):
        return {}
    return {f.name: f.metadata["component"] for f in attrs.fields(cls) if "component" in f.metadata}


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
        lambda t: t == dict[str, Any], lambda v, _: require_mapping(v)
    )
    converter.register_structure_hook_func(lambda t: t == (int | str), _int_or_str)
    as_mapping = make_dict_structure_fn(ComponentRef, converter, _cattrs_forbid_extra_keys=True)

    def component_ref(value: Any, _: type) -> ComponentRef:
        # `masker: metaticket` is short for `masker: {name: metaticket}`
        if isinstance(value, str):
            return ComponentRef(value)
        if not isinstance(value, Mapping):
            raise TypeError(
                f"expected a component name or {{name: ..., options: {{...}}}}, "
                f"got {type(value).__name__} {value!r}"
            )
        return as_mapping(value, ComponentRef)

    converter.register_structure_hook(ComponentRef, component_ref)
    return converter


def _int_or_str(value: Any, _: type) -> int | str:
    """``int | str`` fields (e.g. ``threads: auto`` or ``threads: 2``): no booleans, no floats."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an integer or a string, got {type(value).__name__} {value!r}")
    return value


def require_mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of options, got {type(value).__name__} {value!r}")
    return dict(value)


converter = make_converter()


def render_error(exc: Exception, path: str) -> list[str]:
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
        return unknown_keys_message(exc.extra_fields, [f.name for f in attrs.fields(exc.cl)])
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


MAX_LISTED = 10
"""Names listed in one problem line (the rest are counted)."""


def unknown_keys_message(unknown: Iterable[str], valid: list[str]) -> str:
    """``unknown key(s): a (did you mean 'b'?), c``, or the valid keys when none is close."""
    words, close_to_any = [], False
    unknown = sorted(unknown)
    for key in unknown[:MAX_LISTED]:
        close = closest_name(key, valid)
        close_to_any |= close is not None
        words.append(f"{key} (did you mean {close!r}?)" if close else key)
    if len(unknown) > MAX_LISTED:
        words.append(f"and {len(unknown) - MAX_LISTED:,} more")
    text = f"unknown key(s): {', '.join(words)}"
    return text if close_to_any else f"{text}; valid: {', '.join(valid)}"


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
            problems.append(
                f"{where}: {value!r} is not one of {', '.join(map(repr, meta['choices']))}"
            )
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{where}: must be finite, got {value}")
            for key, test, word in (
                ("ge", lambda v, b: v >= b, ">="),
                ("gt", lambda v, b: v > b, ">"),
                ("le", lambda v, b: v <= b, "<="),
                ("lt", lambda v, b: v < b, "<"),
            ):
                if key in meta and not test(value, meta[key]):
                    problems.append(f"{where}: must be {word} {meta[key]}, got {value}")
    if not problems and callable(getattr(obj, "check", None)):
        for field, problem in obj.check().items():
            problems.append(f"{path}.{field}: {problem}" if field else f"{path}: {problem}")
    return problems


def structure_config(cls: type, data: Any, path: str) -> Any:
    """Structure ``data`` into the attrs class ``cls``; every problem in one ConfigError."""
    problems: list[str] = []
    config = None
    try:
        config = converter.structure(require_mapping(data), cls)
    except (ClassValidationError, IterableValidationError, TypeError) as exc:
        problems += render_error(exc, path)
    if config is not None:
        problems += check_values(config, path)
    if problems:
        raise ConfigError(problems)
    return config
