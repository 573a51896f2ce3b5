"""A user's image folders for ``fewmask adapt``: ImageFolder layout, the model's input shape.

``SUPPORT/<class>/*.{jpg,jpeg,png}``: one subfolder per class, at least one image in each, at
least two classes. ``QUERY/`` is either labelled like the support folder (its class names among
the support's) or holds the images themselves. Images are decoded with the project's pixel
pipeline (:func:`fewmask.datasets.images.decode_image`: grey or RGB, PIL bilinear squash to the
model's size), as uint8 ``[N, C, H, W]``. Every problem is an :class:`ExportError` naming the
folder or file, found before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from fewmask.datasets.images import decode_image
from fewmask.datasets.layout import IMAGE_SUFFIXES
from fewmask.errors import DatasetError, ExportError

LAYOUT = "one subfolder of images per class: DIR/<class>/*.{jpg,jpeg,png}"


@attrs.frozen
class ImageSet:
    """Decoded images, their files, and labels (-1 where the folder is unlabelled)."""

    images: torch.Tensor
    labels: torch.Tensor
    files: tuple[Path, ...]
    classes: tuple[str, ...]

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).all())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise ExportError(f"{what}: {folder} does not exist")
    if not folder.is_dir():
        raise ExportError(f"{what}: {folder} is not a folder ({LAYOUT})")
    return folder


def class_folders(path: str | Path, what: str) -> list[tuple[str, list[Path]]]:
    """``(class name, image files)`` of every subfolder, sorted by name."""
    folder = _folder(path, what)
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = _images_in(folder)
        raise ExportError(
            f"{what}: {folder} has no class subfolders"
            + (f" ({len(loose)} images lie in it directly)" if loose else " and no images")
            + f"; expected {LAYOUT}"
        )
    found = []
    for cls in classes:
        files = _images_in(cls)
        if not files:
            raise ExportError(
                f"{what}: class folder {cls} holds no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        found.append((cls.name, files))
    return found


def decode(files: Sequence[Path], shape: Sequence[int], what: str) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` of ``files`` in the model's ``shape``."""
    channels, height, width = shape
    if height != width:
        raise ExportError(f"{what}: the model takes {height}x{width} images; only square ones")
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            out[i] = decode_image(path, what, size=height, channels=channels)
        except DatasetError as exc:
            raise ExportError(str(exc)) from None
    return torch.from_numpy(out)


def read_support(path: str | Path, shape: Sequence[int]) -> ImageSet:
    """The labelled support images (labels: class positions in sorted order)."""
    classes = class_folders(path, "--support")
    if len(classes) < 2:
        raise ExportError(
            f"--support: {path} has one class ({classes[0][0]}); a classifier needs at least two"
        )
    files = [f for _, group in classes for f in group]
    labels = torch.tensor([i for i, (_, group) in enumerate(classes) for _ in group])
    names = tuple(name for name, _ in classes)
    return ImageSet(decode(files, shape, "--support"), labels, tuple(files), names)


def read_query(path: str | Path, shape: Sequence[int], classes: Sequence[str]) -> ImageSet:
    """The query images: labelled by subfolder (names among ``classes``) or loose, unlabelled."""
    folder = _folder(path, "--query")
    loose = _images_in(folder)
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if loose or not subfolders:
        if not loose:
            raise ExportError(f"--query: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        labels = torch.full((len(loose),), -1)
        return ImageSet(decode(loose, shape, "--query"), labels, tuple(loose), tuple(classes))
    found = class_folders(folder, "--query")
    unknown = [name for name, _ in found if name not in classes]
    if unknown:
        raise ExportError(
            f"--query: class folder(s) {', '.join(unknown)} of {folder} are not among the "
            f"support classes ({', '.join(classes)})"
        )
    files = [f for _, group in found for f in group]
    labels = torch.tensor([classes.index(name) for name, group in found for _ in group])
    return ImageSet(decode(files, shape, "--query"), labels, tuple(files), tuple(classes))
