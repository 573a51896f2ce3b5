"""Masks as pictures: each unit's mask drawn in the shape of its input (the paper's Figure 4).

A first-layer unit of a fully connected backbone has one weight per input pixel, so its mask is
an image of the input (white: kept, black: pruned); a convolution filter's mask is drawn at
kernel size. Used by the Trainer's TensorBoard images (``train.mask_image_every``) and by
``fewmask experiment mask-pictures``.
"""

from __future__ import annotations

import math

from torch import Tensor


def unit_pictures(mask: Tensor, input_shape: tuple[int, ...]) -> Tensor | None:
    """Masks as images ``[units, C, H, W]``: a Linear row as the input image, a conv filter as
    its kernel; ``None`` for a mask that is neither (a deeper Linear layer)."""
    if mask.dim() == 2 and mask.shape[1] == math.prod(input_shape):
        return mask.reshape(mask.shape[0], *input_shape)
    if mask.dim() == 4:
        return mask
    return None


def tile_images(images: Tensor, nrow: int, padding: int = 1, pad_value: float = 0.5) -> Tensor:
    """Images ``[N, C, H, W]`` (C: 1 or 3) tiled ``nrow`` to a row into one RGB image, with
    ``padding`` pixels of ``pad_value`` around each; a single image comes back unpadded (the
    layout of ``torchvision.utils.make_grid``, without needing torchvision)."""
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    if len(images) == 1:
        return images[0]
    count, channels, height, width = images.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    step_y, step_x = height + padding, width + padding
    size = (channels, rows * step_y + padding, columns * step_x + padding)
    out = images.new_full(size, pad_value)
    for k, image in enumerate(images):
        y, x = divmod(k, columns)
        top, left = y * step_y + padding, x * step_x + padding
        out[:, top : top + height, left : left + width] = image
    return out


def mask_grid(mask: Tensor, input_shape: tuple[int, ...], units: int = 64) -> Tensor:
    """One RGB image ``[3, H, W]`` in [0, 1] of the first ``units`` units' masks, in a square
    grid; a mask that is not drawable per unit is drawn as its ``[out, in]`` matrix."""
    pictures = unit_pictures(mask, input_shape)
    if pictures is None:
        pictures = mask.reshape(1, 1, mask.shape[0], -1)
    pictures = pictures[:units].float()
    if pictures.shape[1] not in (1, 3):
        pictures = pictures.mean(1, keepdim=True)  # many input channels: the fraction kept
    return tile_images(pictures, nrow=math.ceil(math.sqrt(len(pictures)))).clamp(0, 1)
