"""The paper's experiments and analyses, one module each, run by ``fewmask experiment``.

======================  ==================================================================
``width-sweep``         accuracy vs width factor, MAML / Meta-ticket / +IteRand (Figure 3)
``constant-weights``    Meta-ticket on constant weights vs a random subnetwork (Sec. 4.1.2)
``task-gradient``       inner-loop gradient magnitude over meta-training (Figure 2)
``cross-domain``        all methods, several seeds, several meta-test domains (Table 1)
``mask-pictures``       first-layer masks drawn as input-shaped pictures (Figure 4)
``mask-locality``       first-layer mask locality index and overlap across seeds (Figure 4)
======================  ==================================================================

Each writes ``NAME.csv``, ``NAME.md``, PNG charts and TensorBoard events into its output folder;
every variant is an ordinary run under ``OUT/runs/``. From Python::

    from fewmask.experiments import run_experiment
    rows = run_experiment("constant-weights", "examples/experiments/constant_weights.yaml")
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fewmask.config import apply_overrides, read_config_file
from fewmask.errors import ConfigError, closest_name
from fewmask.experiments import (  # noqa: F401  (each module registers its experiment)
    constant_weights,
    cross_domain,
    locality,
    mask_pictures,
    task_gradient,
    width_sweep,
)
from fewmask.experiments.common import EXPERIMENTS, Experiment, structure_settings
from fewmask.experiments.launch import failed_error
from fewmask.interfaces import Launcher


def run_experiment(
    name: str,
    config: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    launcher: str = "serial",
    launcher_options: Mapping[str, Any] | None = None,
    collect: bool = False,
) -> list[dict[str, Any]]:
    """Run experiment ``name`` over the base ``config`` (file or plain data, with ``-o``-style
    ``overrides``); ``settings`` are the experiment's own options. Returns the table rows.

    ``force`` starts over: once the config and the variants are validated, what an earlier run
    of an experiment wrote into ``out`` (and only that) is removed. ``launcher`` (a registered
    launcher, with its ``launcher_options``) runs the variants; ``collect`` runs none and
    gathers what finished. Runs that fail leave the others running; the tables are written with
    them missing, then a :class:`~fewmask.errors.JobsFailedError` names each."""
    if name not in EXPERIMENTS:
        close = closest_name(name, EXPERIMENTS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ConfigError(
            [f"no experiment named {name!r}.{hint} Available: {', '.join(sorted(EXPERIMENTS))}"]
        )
    info = EXPERIMENTS[name]
    chosen = create_launcher(launcher, launcher_options)  # bad options: before any run starts
    parsed = structure_settings(info.settings_cls, settings or {})
    base = read_config_file(config) if isinstance(config, (str, Path)) else dict(config)
    base = apply_overrides(base, overrides)
    out = Path(out) if out is not None else Path("runs") / "experiments" / name
    experiment = Experiment(name, base, out, progress, force, chosen, collect)
    try:
        rows = info.run(experiment, parsed)
    finally:
        experiment.close()
    return finish(experiment, rows)


def create_launcher(name: str, options: Mapping[str, Any] | None = None) -> Launcher:
    """The registered launcher ``name`` with ``options`` checked (a ConfigError names a bad
    one, an UnknownComponentError says what to install)."""
    from fewmask.session import create

    return create("launcher", name, dict(options or {}))


def finish(experiment: Experiment, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows``, once the tables are written; a JobsFailedError if some runs failed."""
    if experiment.missing and experiment.progress:
        print(
            f"[{experiment.name}] not finished yet (missing in the tables): "
            + ", ".join(experiment.missing),
            file=sys.stderr,
        )
    if experiment.failures:
        raise failed_error(experiment.failures, experiment.planned)
    return rows


__all__ = ["EXPERIMENTS", "run_experiment"]
