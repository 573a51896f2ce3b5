"""Which config changes an existing run accepts: ``-o`` overrides on ``--resume`` and ``test``.

A resumed run continues the same meta-training: overrides may say how long and how it continues
(:data:`RESUMABLE`), never what is trained (model, data, episodes, objective, seed). ``fewmask
test`` may also change the episodes and the inner loop's test steps, but not the model
(:data:`TEST_FIXED`): its checkpoint could not be loaded into another one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from fewmask.config.files import MAX_VALUE_CHARS, parse_yaml, plain_data_problems
from fewmask.config.resolve import ResolvedConfig, plain_config, resolve_config
from fewmask.errors import ConfigError
from fewmask.registry import Registry

RESUMABLE = (
    "train.iterations",
    "objective.options.lr",
    "train.val_every",
    "train.val_episodes",
    "train.test_episodes",
    "train.checkpoint_every",
    "train.log_every",
    "train.histogram_every",
    "train.mask_image_every",
    "train.progress",
    "train.device",
    "train.engine",
    "train.tune_malloc",
    "train.threads",
    "test_datasets",
    "dataset.options.root",
    "dataset.options.cache_dir",
)
"""Config paths a resumed run may change (each with everything below it)."""

TEST_FIXED = ("backbone", "masker", "objective")
"""Config paths ``fewmask test -o`` may not change: the checkpoint holds their state."""

MISSING = "(not set)"
"""How :func:`changed_values` shows a value one side does not have."""


def changed_values(before: Any, after: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted path: (old, new)}`` for every value that differs between two plain configs
    (mappings are compared key by key, anything else as a whole)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        changes: dict[str, tuple[Any, Any]] = {}
        for key in [*before, *(k for k in after if k not in before)]:
            where = f"{path}.{key}" if path else str(key)
            changes |= changed_values(before.get(key, MISSING), after.get(key, MISSING), where)
        return changes
    return {} if before == after else {path: (before, after)}


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith((f"{p}.", f"{p}[")) for p in prefixes)


def check_resume_changes(changes: Mapping[str, tuple[Any, Any]], what: str = "--resume") -> None:
    """Refuse, naming each, the changes a resumed run may not make."""
    refused = [p for p in changes if not _under(p, RESUMABLE)]
    if refused:
        problems = [
            f"$.{p}: {changes[p][0]!r} -> {changes[p][1]!r} would change the run's model, data "
            "or objective"
            for p in refused
        ]
        problems.append(
            f"{what} may change only: {', '.join(RESUMABLE)}; to change anything else, "
            "start a new run (fewmask train CONFIG --run-dir NEW_DIR)"
        )
        raise ConfigError(problems)


def check_test_changes(changes: Mapping[str, tuple[Any, Any]], what: str = "RUN_DIR") -> None:
    """Refuse, naming each, the changes that would make the checkpoint another model's."""
    refused = [p for p in changes if _under(p, TEST_FIXED)]
    if refused:
        raise ConfigError(
            [
                f"$.{p}: {changes[p][0]!r} -> {changes[p][1]!r}: the checkpoint in {what} holds "
                f"another {p.split('.')[0]}; it cannot be changed when re-testing a run"
                for p in refused
            ]
        )


def parse_value(text: str) -> Any:
    """A ``-o key=value`` value in YAML syntax: ``3``, ``1e-3``, ``[1, 2]``, ``x``.

    Bounded like a config file (:mod:`fewmask.config.files`); any problem is a ConfigError."""
    if len(text) > MAX_VALUE_CHARS:
        raise ConfigError([f"$: a value of {len(text):,} characters is too long"])
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError([f"$: the value is not valid YAML ({problem})"]) from None
    problems = plain_data_problems(value)
    if problems:
        raise ConfigError(problems)
    return value


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
            try:
                node[parts[-1]] = parse_value(text)
            except ConfigError as exc:
                problems += [f"{flag} {item!r}: {p.removeprefix('$: ')}" for p in exc.problems]
    if problems:
        raise ConfigError(problems)
    return data


def resolve_changed(
    stored: Mapping[str, Any],
    overrides: Iterable[str],
    run_dir: str,
    registry: Registry,
    *,
    resume: bool,
    what: str,
) -> tuple[ResolvedConfig, dict[str, tuple[Any, Any]]]:
    """A stored run's config with ``overrides`` applied, resolved once, and what they change.

    The run stays in ``run_dir`` (an override of ``run_dir`` is refused). With ``resume`` the
    changes a resumed run may not make are refused (:data:`RESUMABLE`), otherwise those that
    would change the model (:data:`TEST_FIXED`). An option added since the config was stored,
    at its default, is no change."""
    overrides = list(overrides)
    if any(o.partition("=")[0].strip() == "run_dir" for o in overrides):
        raise ConfigError(
            [
                f"$.run_dir: a run stays in its folder ({run_dir}); to continue it elsewhere, "
                "move the folder and resume from there"
            ]
        )
    data = apply_overrides(dict(stored), overrides)
    data["run_dir"] = run_dir
    resolved = resolve_config(data, registry)
    without = {k: v for k, v in stored.items() if k != "run_dir"}
    after = {k: v for k, v in plain_config(resolved).items() if k != "run_dir"}
    changes = {
        path: change
        for path, change in changed_values(without, after).items()
        if change[0] != MISSING or _overridden(path, overrides)
    }
    (check_resume_changes if resume else check_test_changes)(changes, what)
    return resolved, changes


def _overridden(path: str, overrides: Iterable[str]) -> bool:
    """Whether an override sets ``path``, something above it or something below it."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if path == key or path.startswith(f"{key}.") or key.startswith(f"{path}."):
            return True
    return False
