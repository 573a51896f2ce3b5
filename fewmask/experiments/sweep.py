"""``fewmask sweep``: a grid over any config keys, for what is not one of the paper's analyses.

Each ``-x KEY=[A,B]`` is an axis; the grid is every combination, each an ordinary run in
``OUT/runs/<key=value_...>/``, run by any launcher, reused and resumed like an experiment's.
``OUT/sweep.csv`` has one row per run; ``OUT/sweep.md`` one per point of the grid without the
``seed`` axis: the accuracy's mean +- standard deviation over the seeds that finished.

Example::

    fewmask sweep examples/metaticket_glyphs.yaml -x backbone.options.width=[1,2] \\
        -x seed=[1,2,3] --launcher local --workers 2
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fewmask.config import apply_overrides, parse_value, read_config_file
from fewmask.errors import ConfigError
from fewmask.experiments import create_launcher, finish
from fewmask.experiments.common import (
    MISSING,
    Experiment,
    markdown_table,
    mean_std,
    percent,
    result_row,
)

SEED = "seed"


def parse_axes(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["key=[a,b]", ...]`` -> ``{key: [a, b]}`` (a single value is an axis of one); every
    problem reported at once."""
    axes: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"-x {item!r}: expected KEY=[A,B], e.g. -x seed=[1,2,3]")
            continue
        try:
            value = parse_value(text)
        except yaml.YAMLError as exc:
            problems.append(f"-x {item!r}: not a YAML value ({str(exc).splitlines()[0]})")
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            problems.append(f"-x {item!r}: give at least one value")
        elif key in axes:
            problems.append(f"-x {key}: given twice; list all its values in one -x")
        else:
            axes[key] = values
    if not axes and not problems:
        problems.append("-x: give at least one axis, e.g. -x seed=[1,2,3]")
    if problems:
        raise ConfigError(problems)
    return axes


def label(point: Mapping[str, Any]) -> str:
    """A run folder's name for one point of the grid, e.g. ``backbone.options.width=2_seed=1``."""
    parts = []
    for key, value in point.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9.,:=+-]+', '-', text)}")
    return "_".join(parts)


def run_sweep(
    config: str | Path | Mapping[str, Any],
    axes: Mapping[str, Sequence[Any]],
    overrides: Iterable[str] = (),
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    launcher: str = "serial",
    launcher_options: Mapping[str, Any] | None = None,
    collect: bool = False,
) -> list[dict[str, Any]]:
    """Run every point of the grid ``axes`` over the base ``config``; returns one row per run
    (its axis values and results; ``status: missing`` for one without results)."""
    chosen = create_launcher(launcher, launcher_options)
    base = read_config_file(config) if isinstance(config, (str, Path)) else dict(config)
    base = apply_overrides(base, overrides)
    if out is None:
        stem = Path(config).stem if isinstance(config, (str, Path)) else "config"
        out = Path("runs") / "sweeps" / stem
    experiment = Experiment("sweep", base, Path(out), progress, force, chosen, collect)
    try:
        keys = list(axes)
        points = [dict(zip(keys, values)) for values in itertools.product(*axes.values())]
        variants, seen = [], set()
        for point in points:
            name = label(point)
            if name in seen:
                raise ConfigError([f"-x: two points of the grid share the folder name {name!r}"])
            seen.add(name)
            patch = apply_overrides({}, [f"{k}={json.dumps(v)}" for k, v in point.items()])
            variants.append(experiment.variant(name, patch, cross_domain=True))
        experiment.validate(variants)
        found = experiment.run_variants(variants)
        rows = [{**point, **result_row(results)} for point, results in zip(points, found)]
        experiment.write_table("sweep", rows, summary(rows, keys))
    finally:
        experiment.close()
    return finish(experiment, rows)


def summary(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The markdown table: one row per point without the seed axis, the accuracy's mean +-
    std over seeds that finished (with their count); one run's 95% CI without a seed axis."""
    group_keys = [k for k in keys if k != SEED]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[k]) for k in group_keys), []).append(row)
    table = []
    for members in groups.values():
        done = [r for r in members if r["accuracy"] is not None]
        if not done:
            accuracy = MISSING
        elif SEED in keys:
            accuracy = percent(*mean_std([r["accuracy"] for r in done]))
        else:
            accuracy = percent(done[0]["accuracy"], done[0]["ci95"])
        cells = [_shown(members[0][k]) for k in group_keys]
        table.append([*cells, accuracy, f"{len(done)}/{len(members)}"])
    spread = "mean +- std over seeds" if SEED in keys else "95% CI over test episodes"
    header = [*group_keys, f"accuracy % ({spread})", "runs with results"]
    return f"Accuracy %, {spread}; every run in sweep.csv\n\n" + markdown_table(header, table)


def _shown(value: Any) -> Any:
    """A table cell: a number or string as it is, a mapping or list as compact JSON."""
    return json.dumps(value, separators=(", ", ": ")) if isinstance(value, (dict, list)) else value
