"""Config text read within bounds: size, nesting, YAML alias expansion, value types.

A config is small, plain data: mappings with string keys, lists, strings, numbers, booleans and
nulls. Everything else is refused with a ``ConfigError`` naming the file, the line or the
``$.path`` and the fix, *before* it can cost memory or time:

- files over :data:`MAX_BYTES`, text that is not UTF-8;
- nesting deeper than :data:`MAX_DEPTH` (YAML and JSON are scanned before they are built,
  TOML's recursive parser is stopped);
- YAML aliases that expand to more than :data:`MAX_NODES` values (the "billion laughs"), or
  that refer to themselves;
- YAML tags other than the plain ones (``!!binary``, ``!!set``, ``!!timestamp``, ...), and dates
  or times from YAML or TOML (quote them to make them strings);
- integers of more than :data:`MAX_INT_DIGITS` digits.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

import attrs
import yaml

from fewmask.errors import ConfigError
from fewmask.options import converter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_BYTES = 1 << 20
"""Largest config file (1 MiB; real configs are a few hundred bytes)."""
MAX_DEPTH = 64
"""Deepest nesting of mappings and lists."""
MAX_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded."""
MAX_INT_DIGITS = 4300
"""Python's own limit for decimal integer conversion (``sys.get_int_max_str_digits``)."""
MAX_VALUE_CHARS = 100_000
"""Longest ``-o key=value`` value."""

_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
}
_DECIMAL = re.compile(r"[-+]?[0-9][0-9_]*")
_FOREIGN = {  # type -> how a config problem calls it
    datetime.datetime: "a date and time",
    datetime.date: "a date",
    datetime.time: "a time of day",
    bytes: "binary data",
    set: "a set",
    frozenset: "a set",
}


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


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _joined_pairs(text: str) -> str:
    """``"\\ud83d\\ude00"`` (UTF-16 escapes, as JSON and ``json.dumps`` write a character
    beyond the Basic Multilingual Plane) is one character, as in JSON; PyYAML keeps two lone
    surrogates, which no file name can hold."""
    return _SURROGATE_PAIR.sub(
        lambda m: m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le"), text
    )


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return _joined_pairs(loader.construct_scalar(node))


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def read_text(path: str | Path) -> str:
    """The file's text: a regular file of at most :data:`MAX_BYTES` bytes of UTF-8."""
    path = Path(path)
    source = str(path)
    try:
        try:
            path.stat()  # not exists(): that says False for a name no file can have (a NUL)
        except FileNotFoundError:
            raise ConfigError([f"$: config file {source!r} does not exist"], source) from None
        if not path.is_file():
            what = "a directory" if path.is_dir() else "not a regular file"
            raise ConfigError([f"$: config file {source!r} is {what}"], source)
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except ConfigError:  # already says what is wrong (a ValueError, not to be wrapped again)
        raise
    except (OSError, ValueError) as exc:  # permissions, a NUL or surrogate in the name
        raise ConfigError([f"$: cannot read config file {source!r}: {_reason(exc)}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            [f"$: the file is larger than {MAX_BYTES:,} bytes; a config is plain settings"],
            source,
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [
                f"$: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); "
                "save it as UTF-8"
            ],
            source,
        ) from None


def parse_text(text: str, kind: str, source: str | None = None) -> Any:
    """Plain data from YAML (``kind`` ``"yaml"``), TOML or JSON text, within the bounds."""
    name = Path(source).name if source else "the text"
    try:
        if kind == "toml":
            data = _recursion_bounded(tomllib.loads, text)
        elif kind == "json":
            _check_json_depth(text)
            data = json.loads(text, parse_int=_bounded_int)
        else:
            data = parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError([f"$: cannot parse {name}: {exc}"], source) from None
    problems = plain_data_problems(data)
    if problems:
        raise ConfigError(problems, source)
    return data


def parse_yaml(text: str) -> Any:
    """One YAML document, its events checked (depth, tags, aliases, sizes) before it is built."""
    _scan_yaml(text)
    return yaml.load(text, Loader=_Loader)


def plain_data_problems(data: Any, path: str = "$") -> list[str]:
    """Every value that is not plain config data, or nested deeper than :data:`MAX_DEPTH`."""
    problems: list[str] = []
    todo = [(path, data, 0)]
    while todo and len(problems) < 20:
        where, value, depth = todo.pop()
        if depth > MAX_DEPTH:
            problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep")
        elif isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str):
                    problems.append(
                        f"{where}: the key {key!r} is not a string (YAML reads yes/no/on/off as "
                        "booleans and 1 as a number); quote it"
                    )
                    continue
                todo.append((f"{where}.{key}", child, depth + 1))
        elif isinstance(value, list):
            todo += [(f"{where}[{i}]", child, depth + 1) for i, child in enumerate(value)]
        elif value is None or isinstance(value, (str, bool, int, float)):
            continue
        else:
            what = next((w for t, w in _FOREIGN.items() if isinstance(value, t)), None)
            what = what or f"a {type(value).__name__}"
            fix = "use a list" if isinstance(value, (set, frozenset)) else "quote it as a string"
            problems.append(f"{where}: {what} is not a config value; {fix}")
    return sorted(problems)


# ----------------------------------------------------------------------------- YAML


def _scan_yaml(text: str) -> None:
    """Walk the YAML events (no objects are built): refuse deep nesting, foreign tags, long
    integers, self-referencing aliases and alias expansion beyond :data:`MAX_NODES` values."""
    stack: list[list[Any]] = []  # open collections: [anchor, values, depth below]
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, depth) once complete
    total = 0

    def add(values: int, depth: int, line: int) -> None:
        nonlocal total
        if len(stack) + depth > MAX_DEPTH:
            raise ConfigError([f"$: line {line}: nested more than {MAX_DEPTH} levels deep"])
        if stack:
            stack[-1][1] += values
            stack[-1][2] = max(stack[-1][2], depth)
        else:
            total += values
        if total > MAX_NODES or (stack and stack[-1][1] > MAX_NODES):
            raise ConfigError(
                [
                    f"$: line {line}: the YAML aliases expand to more than {MAX_NODES:,} values "
                    "(an alias bomb?); write the values out"
                ]
            )

    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!" and tag not in _PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(
                [
                    f"$: line {line}: the YAML tag {shown} is not allowed in a config (only "
                    "strings, numbers, booleans, lists and mappings; quote a date to make it a "
                    "string)"
                ]
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise ConfigError([f"$: line {line}: nested more than {MAX_DEPTH} levels deep"])
            stack.append([event.anchor, 1, 0])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, values, depth = stack.pop()
            if anchor is not None:
                sizes[anchor] = (values, depth + 1)
            add(values, depth + 1, line)
        elif isinstance(event, yaml.ScalarEvent):
            _check_scalar(event, line)
            if event.anchor is not None:
                sizes[event.anchor] = (1, 0)
            add(1, 0, line)
        elif isinstance(event, yaml.AliasEvent):
            if any(entry[0] == event.anchor for entry in stack):
                raise ConfigError(
                    [
                        f"$: line {line}: the alias *{event.anchor} refers to itself (its anchor "
                        f"&{event.anchor} is still open)"
                    ]
                )
            values, depth = sizes.get(event.anchor, (1, 0))  # an unknown one: yaml reports it
            add(values, depth, line)


def _check_scalar(event: yaml.ScalarEvent, line: int) -> None:
    value = event.value
    if len(value) > MAX_VALUE_CHARS:
        raise ConfigError([f"$: line {line}: a value of {len(value):,} characters is too long"])
    plain = event.implicit[0] and event.style is None
    if plain and len(value) > MAX_INT_DIGITS and _DECIMAL.fullmatch(value):
        raise ConfigError(
            [
                f"$: line {line}: an integer of {len(value):,} digits is too large (at most "
                f"{MAX_INT_DIGITS})"
            ]
        )


# ----------------------------------------------------------------------------- JSON, TOML


def _check_json_depth(text: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` (a scan, before the recursive parser)."""
    depth, in_string, escaped = 0, False, False
    for position, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, position) + 1
                raise ConfigError([f"$: line {line}: nested more than {MAX_DEPTH} levels deep"])
        elif char in "]}":
            depth -= 1


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ConfigError(
            [f"$: an integer of {len(text):,} digits is too large (at most {MAX_INT_DIGITS})"]
        )
    return int(text)


def _recursion_bounded(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except RecursionError:
        raise ConfigError([f"$: nested more than {MAX_DEPTH} levels deep"]) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file into plain data, within the
    bounds of :mod:`fewmask.config.files` (size, nesting, aliases, plain values only)."""
    path = Path(path)
    kind = {".toml": "toml", ".json": "json"}.get(path.suffix, "yaml")
    data = parse_text(read_text(path), kind, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"$: expected a mapping at the top level, got {type(data).__name__}"], str(path)
        )
    return data


def config_yaml(config: Any) -> str:
    """A config (or its plain data, e.g. :func:`fewmask.config.plain_config`) as YAML text."""
    data = converter.unstructure(config) if attrs.has(type(config)) else dict(config)
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)


def dump_config(config: Any, path: str | Path) -> None:
    """Write a config (or its plain data) as YAML to ``path``."""
    Path(path).write_text(config_yaml(config))
