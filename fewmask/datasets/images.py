"""Pixels: decoding image files to uint8 arrays, resizing, channels, rotated classes.

Resampling is PIL's BILINEAR everywhere (antialiased when shrinking); nothing is normalised or
augmented, as in the paper's code.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fewmask.errors import DatasetError

Arrays = tuple[torch.Tensor, torch.Tensor, list[str]]
"""A decoded split: uint8 images ``[N, C, H, W]``, int64 labels ``[N]``, class names."""

Allocate = Callable[[tuple[int, ...]], np.ndarray]
_ALLOCATE: ContextVar[Allocate | None] = ContextVar("fewmask_allocate_images", default=None)


def new_images(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised uint8 array for a split's decoded images.

    While a :class:`~fewmask.datasets.base.CachedSource` decodes a split for its cache, this is
    the cache's own images file, memory-mapped: decoding then needs no memory for the whole
    split, and the cache is written as it goes. Otherwise it is ordinary memory.
    """
    allocate = _ALLOCATE.get()
    return allocate(tuple(shape)) if allocate else np.empty(shape, dtype=np.uint8)


@contextmanager
def allocating_with(allocate: Allocate) -> Iterator[None]:
    """Inside: :func:`new_images` calls ``allocate``."""
    token = _ALLOCATE.set(allocate)
    try:
        yield
    finally:
        _ALLOCATE.reset(token)


def decode_image(
    path: Path | str,
    dataset: str,
    *,
    size: int,
    channels: int,
    resize: str = "squash",
    crop_scale: float = 1.5,
    invert: bool = False,
    data: bytes | None = None,
) -> np.ndarray:
    """One image as uint8 ``[channels, size, size]``, from the file ``path`` or from ``data``.

    ``data`` holds the encoded bytes of an archive member; ``path`` then only names it in
    errors. ``squash`` resizes to ``size x size`` (aspect ratio not kept); ``center_crop``
    resizes the shorter side to ``round(size * crop_scale)`` keeping the aspect ratio, then
    crops the centre ``size x size``.
    """
    image = open_image(path, dataset, "L" if channels == 1 else "RGB", data)
    array = np.asarray(fit_image(image, size, resize, crop_scale), dtype=np.uint8)
    if invert:
        array = 255 - array
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def open_image(path: Path | str, dataset: str, mode: str, data: bytes | None = None):
    """A decoded PIL image in ``mode``; a corrupt or truncated file is an error naming it."""
    try:
        source = io.BytesIO(data) if data is not None else path
        with Image.open(source) as opened, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notes of some PNGs
            return opened.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{dataset}: cannot decode image {path}: {exc}") from None


def fit_image(image: Image.Image, size: int, resize: str = "squash", crop_scale: float = 1.5):
    """Resize a PIL image to ``size x size`` (see :func:`decode_image`)."""
    if resize == "squash":
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return image
    width, height = image.size
    scale = max(size, round(size * crop_scale)) / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize uint8 ``[N, C, H, W]`` (C = 1 or 3) to ``size x size`` with PIL BILINEAR."""
    if images.shape[-2:] == (size, size):
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return out


def decode_classes(
    files_by_class: Sequence[Sequence[Path]], dataset: str, **decode_options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every file of every class into ``(images, labels)``, labels = class position."""
    size, channels = decode_options["size"], decode_options["channels"]
    total = sum(len(files) for files in files_by_class)
    images = new_images((total, channels, size, size))
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for label, files in enumerate(files_by_class):
        for path in files:
            images[i] = decode_image(path, dataset, **decode_options)
            labels[i] = label
            i += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def with_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Replicate 1-channel images to ``channels`` (3: grayscale as RGB)."""
    if images.shape[1] == channels:
        return images
    return images.expand(-1, channels, -1, -1).contiguous()


def rotated_classes(arrays: Arrays, name_format: str) -> Arrays:
    """Add the 90/180/270-degree rotations of every class as new classes (x4, Omniglot-style).

    The result holds all classes unrotated, then all rotated by 90 degrees, and so on;
    ``name_format`` names them from ``name`` and ``angle`` (e.g. ``"{name}/rot{angle:03d}"``).
    """
    images, labels, names = arrays
    count = len(names)
    images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.cat([labels + k * count for k in range(4)])
    names = [name_format.format(name=n, angle=90 * k) for k in range(4) for n in names]
    return images, labels, names
