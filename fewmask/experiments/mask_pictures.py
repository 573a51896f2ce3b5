"""Mask pictures (the paper's Figure 4): first-layer masks drawn in the shape of the input.

Each first-layer unit of a fully connected backbone has one weight per input pixel, so its mask
is a picture (white: kept, black: pruned). For a convolutional first layer each filter's mask is
drawn at kernel size. Besides the grid of units, ``mask_density.png`` shows, per input pixel, the
fraction of units that keep it.

The model comes from an existing run (``run_dir`` setting) or is meta-trained from the config.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from PIL import Image
from torch import Tensor

from fewmask.errors import ConfigError
from fewmask.experiments.common import Experiment, markdown_table, register
from fewmask.experiments.launch import failed_error
from fewmask.options import option
from fewmask.training.pictures import tile_images
from fewmask.training.pictures import unit_pictures as _unit_pictures
from fewmask.training.trainer import Trainer


@attrs.frozen
class MaskPicturesSettings:
    """Settings of ``fewmask experiment mask-pictures``."""

    run_dir: str | None = option(
        None, help="draw the masks of this finished run (default: meta-train the config first)"
    )
    layer: str | None = option(None, help="masked weight to draw (default: the first one)")
    units: int = option(64, ge=1, help="how many units (rows of the weight) to draw")
    scale: int = option(4, ge=1, help="pixels per mask entry in the PNG")


def unit_pictures(mask: Tensor, input_shape: tuple[int, ...]) -> Tensor:
    """Masks as images ``[units, C, H, W]`` (:func:`fewmask.training.pictures.unit_pictures`);
    a mask that is not the first layer's is an error."""
    pictures = _unit_pictures(mask, input_shape)
    if pictures is None:
        raise ConfigError(
            [
                f"$.experiment.layer: a mask of shape {tuple(mask.shape)} cannot be drawn as "
                f"{tuple(input_shape)} images; pick the first layer"
            ]
        )
    return pictures


def _picture(images: Tensor, scale: int, nrow: int) -> Image.Image:
    if images.shape[1] not in (1, 3):
        images = images.mean(1, keepdim=True)  # many input channels: the fraction kept
    tiled = tile_images(images.float(), nrow=nrow)
    pixels = (tiled.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    image = Image.fromarray(pixels.numpy())
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def _trainer(experiment: Experiment, settings: MaskPicturesSettings) -> Trainer:
    from fewmask.factory import build_run_trainer
    from fewmask.session import default_registry

    run_dir, what = settings.run_dir, "$.experiment.run_dir"
    if run_dir is None:  # the model is meta-trained first, by the experiment's launcher
        variant = experiment.variant("model", {})
        experiment.validate([variant])
        if experiment.run_variants([variant]) == [None]:
            raise (
                failed_error(experiment.failures, 1)
                if experiment.failures
                else ConfigError(
                    [f"{variant.run.path}: not trained yet; run without --collect to train it"]
                )
            )
        run_dir, what = str(variant.run.path), "the model's run"
    # rebuilt from the config in the run's checkpoint, and resumed from it
    return build_run_trainer(run_dir, what=what, registry=default_registry())


@register("mask-pictures", MaskPicturesSettings, "first-layer masks as pictures of the input")
def run_mask_pictures(
    experiment: Experiment, settings: MaskPicturesSettings
) -> list[dict[str, Any]]:
    trainer = _trainer(experiment, settings)
    with torch.no_grad():
        masks = {n: m.detach().cpu() for n, m in trainer.masker.masks().items()}
    if not masks:
        raise ConfigError(["$.masker: the model has no masks to draw (a dense masker?)"])
    layer = settings.layer or next(iter(masks))
    if layer not in masks:
        raise ConfigError(
            [f"$.experiment.layer: {layer!r} is not masked; masked: {', '.join(masks)}"]
        )
    pictures = unit_pictures(masks[layer], trainer.datasets["train"].image_shape)
    shown = pictures[: settings.units]
    grid = _picture(shown, settings.scale, nrow=math.ceil(math.sqrt(len(shown))))
    experiment.write_image("mask_pictures", grid)
    density = pictures.float().mean(0, keepdim=True)
    experiment.write_image("mask_density", _picture(density, settings.scale * 4, nrow=1))

    flat = pictures.flatten(1).float()
    rows = [
        {"layer": layer, "unit": unit, "kept_fraction": flat[unit].mean().item()}
        for unit in range(len(flat))
    ]
    pixel_density = density.flatten()
    split = "test" if "test" in trainer.datasets else "train"
    accuracy = trainer.evaluate(split, trainer.train_config.test_episodes)  # writes nothing
    markdown = markdown_table(
        ["layer", "units", "kept %", "least-kept pixel %", "most-kept pixel %", "test acc %"],
        [
            [
                layer,
                len(flat),
                f"{100 * flat.mean().item():.1f}",
                f"{100 * pixel_density.min().item():.1f}",
                f"{100 * pixel_density.max().item():.1f}",
                f"{100 * accuracy.mean:.2f} +- {100 * accuracy.ci95:.2f}",
            ]
        ],
    )
    experiment.write_table("mask_pictures", rows, markdown)
    return rows
