"""Figure 4 as numbers: how local the first-layer masks are, and how alike across seeds.

For a fully connected first layer each unit's mask is a picture of the input. Pixels that are 0
in every training image (the glyphs' empty border) get no gradient, so a mask keeps or prunes
them only by its start; they are left out of everything below (*dead* pixels; the rest *live*).

- **Locality index** of a unit: the fraction of its kept live weights that fall inside its best
  ``window x window`` square of the image (all channels of a pixel together), 1 when every kept
  weight lies in one such square. The layer's index is the mean over units that keep at least
  one live weight. **Chance** is the same index after each unit's kept live weights are
  scattered uniformly over the live pixels (one fixed random draw): an unstructured mask of the
  same density scores about that.
- **Overlap across seeds** of two runs' masks of the same layer: Cohen's kappa of the two masks
  position by position (live positions; 0 for independent masks of those densities, 1 for
  equal ones), and the correlation over live pixels of the two kept-fraction maps (the share of
  units that keep each pixel, the ``mask_density.png`` picture), which does not depend on how
  units are numbered.

``fewmask experiment mask-locality CONFIG -x 'run_dirs=[...]'`` computes both for finished runs;
runs whose folder names differ only in ``-seedN`` form one group, and the overlap is taken
between the runs of a group. Without ``run_dirs`` the base ``CONFIG`` is meta-trained first (in
``OUT/runs/model``) and measured, as ``mask-pictures`` does.
"""

from __future__ import annotations

import glob
import itertools
import math
import re
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from fewmask.errors import ConfigError
from fewmask.experiments.common import Experiment, markdown_table, mean_std, register
from fewmask.experiments.launch import failed_error
from fewmask.experiments.plots import Series, bar_chart
from fewmask.options import option
from fewmask.training.trainer import Trainer

CHANCE_SEED = 0


def live_pixels(images: Tensor) -> Tensor:
    """``[H, W]`` bool: pixels nonzero in at least one image (any channel) of ``[N, C, H, W]``."""
    return (images != 0).flatten(0, 1).any(0)


def _unit_pictures(mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    channels, height, width = shape
    if mask[0].numel() != channels * height * width:
        raise ValueError(
            f"a mask of shape {tuple(mask.shape)} is not a first layer over {tuple(shape)} images"
        )
    return (mask.detach().reshape(len(mask), channels, height, width) != 0).to(torch.float64)


def _window_counts(pictures: Tensor, window: int) -> Tensor:
    """``[units, positions]`` kept entries inside every ``window x window`` square."""
    summed = pictures.sum(1, keepdim=True)  # channels of a pixel together
    patches = torch.nn.functional.unfold(summed, window)  # [units, window^2, positions]
    return patches.sum(1)


def locality_per_unit(mask: Tensor, shape: tuple[int, ...], live: Tensor, window: int) -> Tensor:
    """Each unit's locality index (NaN for a unit that keeps no live weight)."""
    if window > min(shape[1:]):
        raise ValueError(f"a {window}x{window} window does not fit {shape[1]}x{shape[2]} images")
    pictures = _unit_pictures(mask, shape) * live.to(torch.float64)
    kept = pictures.flatten(1).sum(1)
    best = _window_counts(pictures, window).max(1).values
    return torch.where(kept > 0, best / kept.clamp_min(1), torch.full_like(kept, math.nan))


def chance_mask(mask: Tensor, shape: tuple[int, ...], live: Tensor, seed: int = CHANCE_SEED):
    """Each unit's kept live weights scattered uniformly over the live pixels (every channel of
    a pixel moves together for one-channel images; for several channels, positions scatter
    independently), as a mask of ``mask``'s shape."""
    pictures = _unit_pictures(mask, shape) * live.to(torch.float64)
    flat = pictures.flatten(1)
    positions = live.expand(shape).flatten().nonzero().squeeze(1)
    counts = flat.sum(1).long()
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(len(flat), len(positions), generator=generator).argsort(dim=1)
    out = torch.zeros_like(flat)
    for unit, count in enumerate(counts.tolist()):
        out[unit, positions[order[unit, :count]]] = 1.0
    return out.view_as(mask)


def layer_locality(
    mask: Tensor, shape: tuple[int, ...], live: Tensor, window: int
) -> tuple[float, float]:
    """The layer's mean locality index and its chance level (means over units with live
    weights kept; NaN if there is none)."""
    index = locality_per_unit(mask, shape, live, window)
    chance = locality_per_unit(chance_mask(mask, shape, live), shape, live, window)
    return _nanmean(index), _nanmean(chance)


def _nanmean(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if len(finite) else math.nan


def cohen_kappa(a: Tensor, b: Tensor, keep: Tensor | None = None) -> float:
    """Cohen's kappa of two binary masks of one shape over the positions in ``keep`` (all by
    default): ``(agree - expected) / (1 - expected)``; NaN when both are constant."""
    x, y = (a.detach().flatten() != 0), (b.detach().flatten() != 0)
    if keep is not None:
        x, y = x[keep.flatten()], y[keep.flatten()]
    pa, pb = x.double().mean(), y.double().mean()
    agree = (x == y).double().mean()
    expected = pa * pb + (1 - pa) * (1 - pb)
    return float((agree - expected) / (1 - expected)) if expected < 1 else math.nan


def density_correlation(a: Tensor, b: Tensor, shape: tuple[int, ...], live: Tensor) -> float:
    """Pearson correlation over live pixels of two first-layer masks' kept-fraction maps."""
    maps = [_unit_pictures(m, shape).mean((0, 1))[live] for m in (a, b)]
    centred = [m - m.mean() for m in maps]
    norm = centred[0].norm() * centred[1].norm()
    return float((centred[0] * centred[1]).sum() / norm) if norm > 0 else math.nan


def seed_overlap(a: Tensor, b: Tensor, shape: tuple[int, ...], live: Tensor) -> dict[str, float]:
    """``kappa`` (live positions) and ``density_correlation`` of two runs' first-layer masks."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    keep = live.expand(shape).flatten().expand(len(a), -1)
    return {
        "kappa": cohen_kappa(a, b, keep),
        "density_correlation": density_correlation(a, b, shape, live),
    }


# ------------------------------------------------------------------ the experiment


@attrs.frozen
class MaskLocalitySettings:
    """Settings of ``fewmask experiment mask-locality``."""

    run_dirs: tuple[str, ...] = option(
        (), help="finished run folders, glob patterns allowed (none: meta-train the config)"
    )
    layer: str | None = option(None, help="masked weight to measure (default: the first one)")
    window: int = option(5, ge=1, help="side of the square neighbourhood, in pixels")


def group_name(run: Path, with_experiment: bool = False) -> str:
    """A run folder's name without its ``-seedN`` part: runs of one group differ in seed. With
    ``with_experiment``, prefixed by the experiment's output folder (``OUT`` of ``OUT/runs/``)."""
    name = re.sub(r"-seed\d+", "", run.name)
    return f"{run.parent.parent.name}/{name}" if with_experiment else name


def _run_dirs(patterns: tuple[str, ...]) -> list[Path]:
    runs: list[Path] = []

    for i, pattern in enumerate(patterns):
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        found = [p for p in found if Path(p).is_dir()]
        if not found:
            raise ConfigError([f"$.experiment.run_dirs[{i}]: no run folder {pattern!r}"])
        runs += [Path(p) for p in found if Path(p) not in runs]
    return runs


def _trained_base(experiment: Experiment) -> Path:
    """Meta-train the base config in ``OUT/runs/model`` (reused once finished); its folder."""
    variant = experiment.variant("model", {})
    experiment.validate([variant])
    if experiment.run_variants([variant]) == [None]:  # failed, or not run with --collect
        raise (
            failed_error(experiment.failures, 1)
            if experiment.failures
            else ConfigError(
                [f"{variant.run.path}: not trained yet; run without --collect to train it"]
            )
        )
    return variant.run.path


def _trainer(run: Path, index: int) -> Trainer:
    """The run's Trainer at its final state: from its checkpoint, or, for a run that was only
    meta-tested (no checkpoint), rebuilt from its config (the same seed gives the same masks)."""
    from fewmask.factory import build_run_trainer
    from fewmask.runtime.folder import RunFolder
    from fewmask.session import build_trainer, default_registry
    from fewmask.session import resolve as resolve_config

    folder, what = RunFolder(run), f"$.experiment.run_dirs[{index}]"
    if folder.has_checkpoint():
        return build_run_trainer(run, what=what, registry=default_registry())
    if not folder.config.is_file():
        raise ConfigError([f"{what}: {run} holds no run (no checkpoint, no config.yaml)"])
    data = folder.read_config()
    data["run_dir"] = str(run)
    return build_trainer(resolve_config(data))


def _first_layer(trainer: Trainer, layer: str | None, index: int) -> Tensor:
    with torch.no_grad():
        masks = {n: m.detach().cpu() for n, m in trainer.masker.masks().items()}
    if not masks:
        raise ConfigError([f"$.experiment.run_dirs[{index}]: the run has no masks (dense)"])
    name = layer or next(iter(masks))
    if name not in masks:
        raise ConfigError(
            [f"$.experiment.layer: {name!r} is not masked; masked: {', '.join(masks)}"]
        )
    return masks[name]


@register("mask-locality", MaskLocalitySettings, "first-layer mask locality and seed overlap")
def run_mask_locality(
    experiment: Experiment, settings: MaskLocalitySettings
) -> list[dict[str, Any]]:
    runs = _run_dirs(settings.run_dirs) or [_trained_base(experiment)]
    measured: dict[Path, tuple[Tensor, tuple[int, ...], Tensor]] = {}
    several = len({run.resolve().parent for run in runs}) > 1  # name groups by experiment too
    rows = []
    for index, run in enumerate(runs):
        trainer = _trainer(run, index)
        shape = tuple(trainer.datasets["train"].image_shape)
        live = live_pixels(trainer.datasets["train"].images.cpu())
        mask = _first_layer(trainer, settings.layer, index)
        try:
            index_value, chance = layer_locality(mask, shape, live, settings.window)
        except ValueError as exc:
            raise ConfigError([f"$.experiment.run_dirs[{index}]: {exc}"]) from None
        measured[run] = (mask, shape, live)
        rows.append(
            {
                "group": group_name(run, several),
                "run": str(run),
                "units": len(mask),
                "kept_live": float(_unit_pictures(mask, shape)[:, :, live].mean()),
                "live_pixels": int(live.sum()),
                "window": settings.window,
                "locality": index_value,
                "chance": chance,
            }
        )
    pairs = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [run for run in runs if group_name(run, several) == group]
        for a, b in itertools.combinations(members, 2):
            (ma, shape, live), (mb, _, live_b) = measured[a], measured[b]
            if ma.shape != mb.shape or not torch.equal(live, live_b):
                continue  # different layers or data: no position-wise comparison
            pairs.append(
                {
                    "group": group,
                    "run_a": str(a),
                    "run_b": str(b),
                    **seed_overlap(ma, mb, shape, live),
                }
            )
    experiment.write_table("mask_locality", rows, _summary(rows, pairs, settings.window))
    if pairs:
        experiment.write_table("mask_overlap", pairs, _overlap_table(pairs))
    experiment.write_image("mask_locality", _chart(rows, settings.window))
    return rows


def _chart(rows: list[dict[str, Any]], window: int):
    """Locality and its chance level per group (mean +- std over runs)."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    series = []
    for column in ("locality", "chance"):
        stats = [mean_std([r[column] for r in rows if r["group"] == g]) for g in groups]
        series.append(Series(column, tuple(m for m, _ in stats), tuple(s for _, s in stats)))
    title = f"first-layer mask locality ({window}x{window} window, dead pixels excluded)"
    return bar_chart(title, "share of kept live weights", groups, series)


def _cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" +- {std:.{digits}f}" if len(values) > 1 else "")


def _summary(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], window: int) -> str:
    table = []
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        theirs = [p for p in pairs if p["group"] == group]
        table.append(
            [
                group,
                len(mine),
                _cell([100 * r["kept_live"] for r in mine], 1),
                _cell([r["locality"] for r in mine]),
                _cell([r["chance"] for r in mine]),
                _cell([p["kappa"] for p in theirs]),
                _cell([p["density_correlation"] for p in theirs]),
            ]
        )
    return (
        f"First-layer masks: locality index (share of a unit's kept live weights inside its best "
        f"{window}x{window} window, mean over units), its chance level, and the overlap between "
        "runs of a group (Cohen's kappa; correlation of the kept-fraction maps); mean +- std "
        "over runs or run pairs, dead pixels excluded\n\n"
        + markdown_table(
            ["group", "runs", "kept live %", "locality", "chance", "kappa", "density corr."],
            table,
        )
    )


def _overlap_table(pairs: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["group", "run a", "run b", "kappa", "density corr."],
        [
            [
                p["group"],
                Path(p["run_a"]).name,
                Path(p["run_b"]).name,
                f"{p['kappa']:.3f}",
                f"{p['density_correlation']:.3f}",
            ]
            for p in pairs
        ],
    )
