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


def run_experiment(
    name: str,
    config: str | Path | Mapping[str, Any],
    overrides: Iterable[str] = (),
    settings: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run experiment ``name`` over the base ``config`` (file or plain data, with ``-o``-style
    ``overrides``); ``settings`` are the experiment's own options. Returns the table rows.

    ``force`` starts over: once the config and the variants are validated, what an earlier run
    of an experiment wrote into ``out`` (and only that) is removed."""
    if name not in EXPERIMENTS:
        close = closest_name(name, EXPERIMENTS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ConfigError(
            [f"no experiment named {name!r}.{hint} Available: {', '.join(sorted(EXPERIMENTS))}"]
        )
    info = EXPERIMENTS[name]
    parsed = structure_settings(info.settings_cls, settings or {})
    base = read_config_file(config) if isinstance(config, (str, Path)) else dict(config)
    base = apply_overrides(base, overrides)
    out = Path(out) if out is not None else Path("runs") / "experiments" / name
    experiment = Experiment(name, base, out, progress, force)
    try:
        return info.run(experiment, parsed)
    finally:
        experiment.close()


__all__ = ["EXPERIMENTS", "run_experiment"]
