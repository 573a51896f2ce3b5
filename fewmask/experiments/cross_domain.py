"""Cross-domain table (the shape of the paper's Table 1): meta-train on one dataset, meta-test
on it and on every dataset in the base config's ``test_datasets``, for every method and seed.

The table shows the mean +- standard deviation across seeds (the paper's error bars); the CSV
also keeps each seed's accuracy with its 95% confidence interval over test episodes.
"""

from __future__ import annotations

from typing import Any

import attrs

from fewmask.errors import ConfigError
from fewmask.experiments.common import (
    MISSING,
    Experiment,
    check_choices,
    markdown_table,
    mean_std,
    percent,
    register,
    result_row,
)
from fewmask.experiments.methods import METHODS, method_patch
from fewmask.experiments.plots import Series, bar_chart
from fewmask.options import option

OWN = "own test split"


@attrs.frozen
class CrossDomainSettings:
    """Settings of ``fewmask experiment cross-domain``."""

    methods: tuple[str, ...] = option(
        ("maml", "anil", "boil", "metaticket", "metaticket_boil"), help="methods to compare"
    )
    seeds: tuple[int, ...] = option((1, 2, 3), help="one run per method and seed")


@register("cross-domain", CrossDomainSettings, "all methods, several seeds, several test domains")
def run_cross_domain(experiment: Experiment, settings: CrossDomainSettings) -> list[dict[str, Any]]:
    check_choices(settings.methods, METHODS, "methods")
    if not settings.seeds:
        raise ConfigError(["$.experiment.seeds: give at least one seed"])
    if not experiment.base.get("test_datasets"):
        raise ConfigError(
            [
                "$.test_datasets: the cross-domain experiment meta-tests on the datasets listed "
                "here; add at least one, e.g. [{name: fashion_mnist}]"
            ]
        )
    grid = [(m, s) for m in settings.methods for s in settings.seeds]
    variants = [
        experiment.variant(
            f"{m}-seed{s}", {**method_patch(m, experiment.base), "seed": s}, cross_domain=True
        )
        for m, s in grid
    ]
    experiment.validate(variants)
    rows = []
    for (method, seed), results in zip(grid, experiment.run_variants(variants)):
        own = {"method": method, "seed": seed, "dataset": OWN, **result_row(results)}
        rows.append(own)
        for label, other in (results or {}).get("cross_domain", {}).items():
            rows.append({**own, "dataset": label, **other})  # its accuracy, ci95, episodes

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    summary: dict[tuple[str, str], tuple[float, float]] = {}
    for method in settings.methods:
        for dataset in datasets:
            values = [
                r["accuracy"]
                for r in rows
                if (r["method"], r["dataset"]) == (method, dataset) and r["accuracy"] is not None
            ]
            summary[method, dataset] = mean_std(values) if values else (float("nan"),) * 2
    seeds = ", ".join(map(str, settings.seeds))
    markdown = (
        f"Accuracy %, mean +- std over seeds {seeds} (per-seed 95% CIs in cross_domain.csv)\n\n"
        + markdown_table(
            ["method", *datasets],
            [[m] + [_summary(summary[m, d]) for d in datasets] for m in settings.methods],
        )
    )
    experiment.write_table("cross_domain", rows, markdown)
    chart = bar_chart(
        "meta-test accuracy by domain (mean +- std over seeds)",
        "accuracy (%)",
        datasets,
        [
            Series(
                m,
                tuple(100 * summary[m, d][0] for d in datasets),
                tuple(100 * summary[m, d][1] for d in datasets),
            )
            for m in settings.methods
        ],
    )
    experiment.write_image("cross_domain", chart)
    return rows


def _summary(value: tuple[float, float]) -> str:
    """``mean +- std`` over the seeds with results; ``missing`` when none has any (NaN)."""
    return MISSING if value[0] != value[0] else percent(*value)
