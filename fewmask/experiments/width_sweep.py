"""Width sweep (the paper's Figure 3): accuracy against the backbone's width factor.

Each method is trained at every width factor, for every (ways, shots) pair. The paper's reading:
Meta-ticket trails MAML at small widths, closes the gap (and on 20-way passes MAML) at large
widths, and IteRand narrows the small-width gap.
"""

from __future__ import annotations

from typing import Any

import attrs

from fewmask.experiments.common import (
    MISSING,
    Experiment,
    check_choices,
    markdown_table,
    percent,
    register,
    result_row,
)
from fewmask.experiments.methods import METHODS, method_patch
from fewmask.experiments.plots import Series, line_chart, tile
from fewmask.options import option


@attrs.frozen
class WidthSweepSettings:
    """Settings of ``fewmask experiment width-sweep``."""

    methods: tuple[str, ...] = option(
        ("maml", "metaticket", "metaticket_iterand"), help="methods to compare"
    )
    widths: tuple[float, ...] = option(
        (1.0, 2.0, 4.0, 8.0), help="values of the backbone's `width` option"
    )
    ways: tuple[int, ...] = option((5, 20), help="N of the N-way tasks")
    shots: tuple[int, ...] = option((1, 5), help="K of the K-shot tasks")
    iterand_period: int | None = option(
        None, ge=1, help="IteRand period (default: iterations / 30, as the paper's 1000 of 30000)"
    )


def _label(method: str, width: float, ways: int, shots: int) -> str:
    return f"{method}-width{width:g}-{ways}way{shots}shot"


@register("width-sweep", WidthSweepSettings, "MAML vs Meta-ticket (+IteRand) over width factors")
def run_width_sweep(experiment: Experiment, settings: WidthSweepSettings) -> list[dict[str, Any]]:
    check_choices(settings.methods, METHODS, "methods")
    grid = [
        (method, width, ways, shots)
        for ways in settings.ways
        for shots in settings.shots
        for method in settings.methods
        for width in settings.widths
    ]
    variants = [
        experiment.variant(
            _label(*point),
            {
                **method_patch(point[0], experiment.base, settings.iterand_period),
                "backbone": {"options": {"width": point[1]}},
                "sampler": {"options": {"ways": point[2], "shots": point[3]}},
            },
        )
        for point in grid
    ]
    experiment.validate(variants)
    found = experiment.run_variants(variants)
    rows = [
        {"method": method, "width": width, "ways": ways, "shots": shots, **result_row(results)}
        for (method, width, ways, shots), results in zip(grid, found)
    ]

    tables, panels = [], []
    widths = [f"{w:g}" for w in settings.widths]
    for ways in settings.ways:
        for shots in settings.shots:
            cell = {
                (r["method"], r["width"]): r
                for r in rows
                if r["ways"] == ways and r["shots"] == shots
            }
            tables.append(
                f"**{ways}-way {shots}-shot** (accuracy %, 95% CI over test episodes)\n\n"
                + markdown_table(
                    ["method", *(f"width {w}" for w in widths)],
                    [[m] + [_cell(cell[m, w]) for w in settings.widths] for m in settings.methods],
                )
            )
            panels.append(
                line_chart(
                    f"{ways}-way {shots}-shot",
                    "width factor",
                    "test accuracy (%)",
                    [
                        Series(
                            m,
                            tuple(_percent(cell[m, w], "accuracy") for w in settings.widths),
                            tuple(_percent(cell[m, w], "ci95") for w in settings.widths),
                        )
                        for m in settings.methods
                    ],
                    categories=widths,
                )
            )
    experiment.write_table("width_sweep", rows, "\n".join(tables))
    experiment.write_image("width_sweep", tile(panels))
    return rows


def _cell(row: dict[str, Any]) -> str:
    return MISSING if row["accuracy"] is None else percent(row["accuracy"], row["ci95"])


def _percent(row: dict[str, Any], column: str) -> float:
    """The column in percent; NaN (a gap in the chart) for a variant without results."""
    return float("nan") if row[column] is None else 100 * row[column]
