"""Constant weights (the paper's Section 4.1.2): can the mask alone carry what is learned?

- ``metaticket_constant``: every masked weight (hidden layers and the classifier) is the
  per-layer constant ``sqrt(2 / fan_in)``; Meta-ticket learns only the mask. The weights are
  never meta-learned, so setting them once equals the authors' reset before every task.
- ``random_subnetwork``: the control, a random 50% mask over the same constant weights, not
  meta-trained at all (the authors ran one iteration at learning rate 0).
- ``metaticket_random_weights`` (optional): Meta-ticket over the usual random weights.
- ``metaticket_signed_constant`` and its control ``random_subnetwork_signed_constant``
  (optional): the weights ``sign(N(0, 1)) sqrt(2 / fan_in)``, equal in size, random in sign.

Arms that separate the causes of the positive-constant result (optional):

- ``structured_k1``, ``structured_k4``, ``structured_k16``: a mask-only expressivity bound.
  Hand-made fixed masks over the same positive constants (the ``structured`` masker): one
  ``patch x patch`` window of the image per first-layer unit, ``k`` inputs per unit in every
  deeper hidden layer, the classifier's mask full (``structured_head_fan_in``: 0) unless set;
  never meta-trained, only adapted.
- ``metaticket_constant_dense_head``: Meta-ticket on the constants with the classifier left
  unmasked (the masker's ``exclude_head``): dense, at the backbone's own random
  initialisation, never meta-learned (the Meta-ticket objective learns only scores).
- ``metaticket_constant_sparse50``, ``metaticket_constant_sparse90``: Meta-ticket on the
  constants from a sparse start (``init_sparsity`` 0.5 / 0.9) instead of the dense one.

The paper reports 71.59 +- 1.51 % against about 33 % (Omniglot 5-way 5-shot, 3 inner steps).
Both variants are still adapted per task (3 inner steps by default in the example config).

With positive equal weights and batch-statistic BatchNorm, the hidden units of a constant
network can stay near copies of each other. Every ``diagnostics_every`` iterations each run
records the participation ratio of every hidden layer's activations and the mean pairwise
Hamming distance of every layer's mask (:mod:`fewmask.experiments.diagnostics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from fewmask.experiments.common import (
    MISSING,
    Experiment,
    Variant,
    check_choices,
    markdown_table,
    mean_std,
    percent,
    register,
    result_row,
)
from fewmask.experiments.diagnostics import FILE, read_rows
from fewmask.experiments.jobs import Probe
from fewmask.experiments.plots import Series, bar_chart, line_chart, tile
from fewmask.options import option

STRUCTURED = {"structured_k1": 1, "structured_k4": 4, "structured_k16": 16}  # inputs per unit
SPARSE_START = {"metaticket_constant_sparse50": 0.5, "metaticket_constant_sparse90": 0.9}
VARIANTS = (
    "metaticket_constant",
    "random_subnetwork",
    "metaticket_random_weights",
    "metaticket_signed_constant",
    "random_subnetwork_signed_constant",
    *STRUCTURED,
    "metaticket_constant_dense_head",
    *SPARSE_START,
)
CONTROLS = ("random_subnetwork", "random_subnetwork_signed_constant")  # random masks
UNTRAINED = (*CONTROLS, *STRUCTURED)  # never meta-trained: only adapted per task at meta-test
WEIGHTS = {
    "metaticket_random_weights": "kaiming_normal",
    "metaticket_signed_constant": "signed_constant",
    "random_subnetwork_signed_constant": "signed_constant",
}  # the masker's weight_init; "constant" for the others


@attrs.frozen
class ConstantWeightsSettings:
    """Settings of ``fewmask experiment constant-weights``."""

    variants: tuple[str, ...] = option(
        ("metaticket_constant", "random_subnetwork"), help=f"which of {', '.join(VARIANTS)}"
    )
    seeds: tuple[int, ...] = option((1,), help="one run per variant and seed")
    control_sparsity: float = option(
        0.5, ge=0, lt=1, help="fraction pruned by the random subnetwork's mask"
    )
    objective: dict[str, Any] = option(
        factory=lambda: {"optimizer": "adamw", "lr": 0.1, "schedule": "constant", "warmup": 0},
        help="options of the Meta-ticket objective (the paper: AdamW 0.1, no schedule)",
    )
    mask_head: bool = option(True, help="mask the classifier weight too, as the paper does")
    patch: int = option(
        5, ge=1, help="structured_k*: side of each first-layer unit's square window of the image"
    )
    structured_head_fan_in: int = option(
        0, ge=0, help="structured_k*: inputs kept per class in the classifier (0: all)"
    )
    diagnostics_every: int = option(
        50, ge=0, help="participation ratio and mask Hamming every N iterations (0: off)"
    )


def _patch(variant: str, settings: ConstantWeightsSettings, seed: int) -> dict[str, Any]:
    backbone = {"options": {"mask_head": settings.mask_head}}
    if variant in STRUCTURED:  # fixed hand-made masks: no scores, so no Meta-ticket objective
        options = {
            "patch": settings.patch,
            "fan_in": STRUCTURED[variant],
            "head_fan_in": settings.structured_head_fan_in,
        }
        return {
            "seed": seed,
            "objective": {"name": "maml", "options": {}},  # never used: not meta-trained
            "masker": {"name": "structured", "options": {**options, "weight_init": "constant"}},
            "backbone": backbone,
        }
    weights = WEIGHTS.get(variant, "constant")
    sparsity = settings.control_sparsity if variant in CONTROLS else SPARSE_START.get(variant, 0.0)
    masker: dict[str, Any] = {"weight_init": weights, "init_sparsity": sparsity}
    if variant == "metaticket_constant_dense_head":
        masker["exclude_head"] = True
    return {
        "seed": seed,
        "objective": {"name": "metaticket", "options": dict(settings.objective)},
        "masker": {"name": "metaticket", "options": masker},
        "backbone": backbone,
    }


def _diagnose(experiment: Experiment, variant: Variant, every: int) -> Probe | None:
    """The run's diagnostics probe (``mask-diagnostics``, iteration 0 first); None when they
    are off."""
    if not every:
        return None
    experiment.record(variant.run.path / FILE)
    return Probe("mask-diagnostics", {"every": every, "run_dir": str(variant.run.path)})


@register(
    "constant-weights", ConstantWeightsSettings, "Meta-ticket on constant weights vs random mask"
)
def run_constant_weights(
    experiment: Experiment, settings: ConstantWeightsSettings
) -> list[dict[str, Any]]:
    check_choices(settings.variants, VARIANTS, "variants")
    grid = [(v, s) for v in settings.variants for s in settings.seeds]
    variants = [
        experiment.variant(f"{v}-seed{s}", _patch(v, settings, s), train=v not in UNTRAINED)
        for v, s in grid
    ]
    experiment.validate(variants)
    probes = [_diagnose(experiment, v, settings.diagnostics_every) for v in variants]
    found = experiment.run_variants(variants, probes)
    rows = [
        {"variant": name, "seed": seed, **result_row(results)}
        for (name, seed), results in zip(grid, found)
    ]
    diagnostics = [
        {"variant": name, "seed": seed, **_parse(row)}
        for (name, seed), variant in zip(grid, variants)
        for row in read_rows(variant.run.path / FILE)
    ]

    done = [r for r in rows if r["accuracy"] is not None]  # failed or unfinished: missing
    summary = {
        v: mean_std([r["accuracy"] for r in done if r["variant"] == v])
        if any(r["variant"] == v for r in done)
        else (float("nan"), float("nan"))
        for v in settings.variants
    }
    sparsity = {
        v: _mean([r["sparsity"] for r in done if r["variant"] == v] or [float("nan")])
        for v in settings.variants
    }
    final = _final(diagnostics)
    markdown = (
        f"Accuracy %, mean +- std over seeds {', '.join(map(str, settings.seeds))}; "
        "participation ratio (PR) of each hidden layer and mean pairwise Hamming distance of "
        "each masked layer's mask at the last diagnostics, mean over seeds\n\n"
        + markdown_table(
            [
                "variant",
                "accuracy",
                "mask sparsity %",
                "PR (final, per layer)",
                "Hamming (final, per layer)",
            ],
            [
                [
                    v,
                    MISSING if summary[v][0] != summary[v][0] else percent(*summary[v]),
                    f"{100 * sparsity[v]:.1f}",
                    _per_layer(final, v, "participation_ratio"),
                    _per_layer(final, v, "hamming"),
                ]
                for v in settings.variants
            ],
        )
    )
    experiment.write_table("constant_weights", rows, markdown)
    chart = bar_chart(
        "constant weights: learned mask vs random mask",
        "accuracy (%)",
        list(settings.variants),
        [
            Series(
                "accuracy",
                tuple(100 * summary[v][0] for v in settings.variants),
                tuple(100 * summary[v][1] for v in settings.variants),
            )
        ],
    )
    experiment.write_image("constant_weights", chart)
    if diagnostics:
        _write_diagnostics(experiment, settings.variants, diagnostics)
    return rows


# ------------------------------------------------------------------ diagnostics outputs


def _parse(row: dict[str, str]) -> dict[str, Any]:
    """A row of a run's diagnostics file with numbers for numbers ("" stays: no activations)."""
    ratio = row["participation_ratio"]
    return {
        "iteration": int(row["iteration"]),
        "layer": row["layer"],
        "participation_ratio": float(ratio) if ratio != "" else "",
        "hamming": float(row["hamming"]),
        "sparsity": float(row["sparsity"]),
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _final(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of each run's last diagnostics iteration."""
    last: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r["variant"], r["seed"])
        last[key] = max(last.get(key, 0), r["iteration"])
    return [r for r in rows if r["iteration"] == last[(r["variant"], r["seed"])]]


def _by_layer(rows: Sequence[dict[str, Any]], variant: str, column: str) -> dict[str, float]:
    """``{layer: mean over the rows (seeds) of column}`` for one variant, layers in order."""
    values: dict[str, list[float]] = {}
    for r in rows:
        if r["variant"] == variant and r[column] != "":
            values.setdefault(r["layer"], []).append(r[column])
    return {layer: _mean(v) for layer, v in values.items()}


def _per_layer(rows: Sequence[dict[str, Any]], variant: str, column: str) -> str:
    values = _by_layer(rows, variant, column)
    return " / ".join(f"{v:.2f}" for v in values.values()) or "-"


def _write_diagnostics(
    experiment: Experiment, variants: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    """``OUT/constant_weights_diagnostics.csv``, ``.md`` (first and last value per layer) and
    ``.png`` (participation ratio against iteration, one panel per variant)."""
    first = [r for r in rows if r["iteration"] == 0]
    final = _final(rows)
    table = []
    for v in variants:
        ratio0, ratio = (
            _by_layer(first, v, "participation_ratio"),
            _by_layer(final, v, "participation_ratio"),
        )
        hamming0, hamming = _by_layer(first, v, "hamming"), _by_layer(final, v, "hamming")
        pruned = _by_layer(final, v, "sparsity")
        for layer in hamming:
            table.append(
                [
                    v,
                    layer,
                    *(f"{d[layer]:.2f}" if layer in d else "-" for d in (ratio0, ratio)),
                    *(f"{d[layer]:.3f}" if layer in d else "-" for d in (hamming0, hamming)),
                    f"{100 * pruned[layer]:.1f}",
                ]
            )
    markdown = "Mean over seeds, at iteration 0 and at the last diagnostics\n\n" + markdown_table(
        ["variant", "layer", "PR at 0", "PR final", "Hamming at 0", "Hamming final", "sparsity %"],
        table,
    )
    experiment.write_table("constant_weights_diagnostics", rows, markdown)
    ratios = [r["participation_ratio"] for r in rows if r["participation_ratio"] != ""]
    y_range = (0.0, max(ratios, default=1.0) * 1.05 or 1.0)
    last = max(r["iteration"] for r in rows)
    panels = []
    for v in variants:
        curves: dict[str, dict[int, list[float]]] = {}
        for r in rows:
            if r["variant"] == v and r["participation_ratio"] != "":
                curve = curves.setdefault(r["layer"], {})
                curve.setdefault(r["iteration"], []).append(r["participation_ratio"])
        untrained = all(list(c) == [0] for c in curves.values())
        for c in curves.values():
            if untrained:  # drawn level across the trained variants' iterations
                c[last] = c[0]
        series = [
            Series(layer, tuple(_mean(c[i]) for i in sorted(c)), xs=tuple(map(float, sorted(c))))
            for layer, c in curves.items()
        ]
        if series:
            title = f"{v}: participation ratio{' (untrained)' if untrained else ''}"
            panels.append(line_chart(title, "iteration", "PR", series, y_range=y_range))
    if panels:
        experiment.write_image("constant_weights_diagnostics", tile(panels))
