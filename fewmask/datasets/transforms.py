"""Make a dataset's images fit a trained network's input shape (cross-domain meta-testing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewmask.errors import DatasetError
from fewmask.interfaces import FewShotDataset


def match_shape(dataset: FewShotDataset, shape: tuple[int, int, int]) -> FewShotDataset:
    """``dataset`` with images resized (bilinear, antialiased) and channels converted to ``shape``.

    One channel -> three: replicated; three -> one: the mean of the channels. Other channel
    changes are an error. Returns ``dataset`` itself when nothing needs to change.
    """
    channels, height, width = shape
    images = dataset.images
    if tuple(images.shape[1:]) == tuple(shape):
        return dataset
    have = images.shape[1]
    if have != channels and {have, channels} != {1, 3}:
        raise DatasetError(
            f"{dataset.name}: cannot turn {have}-channel images into {channels}-channel ones"
        )
    out = []
    for chunk in images.split(4096):
        x = chunk.float()
        if have == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif have == 3 and channels == 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[2:] != (height, width):
            x = F.interpolate(
                x, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return FewShotDataset(
        torch.cat(out),
        dataset.labels,
        dataset.class_names,
        f"{dataset.name} as {channels}x{height}x{width}",
    )
