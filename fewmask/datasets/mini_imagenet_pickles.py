"""The two pickle layouts of miniImageNet, read with the restricted unpickler.

- **cache** (``mini-imagenet-cache-{train,val,test}.pkl``): a dict with ``image_data`` uint8
  [N, 84, 84, 3] and ``class_dict`` {wnid: [indices]}.
- **category** (MetaOptNet's ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``,
  written by Python 2, read with ``encoding='latin1'``): a dict with ``data`` uint8
  [N, 84, 84, 3], ``labels`` [N] (integers) and, in the published files, ``catname2label``
  {wnid: label}. Without ``catname2label`` the classes are named by their label.

Both become :class:`Pool`: images ``[N, H, W, 3]`` and the indices of each class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fewmask.datasets.pickles import load_pickle
from fewmask.errors import DatasetError

NAME = "mini_imagenet"
CACHE_FILES = {s: f"mini-imagenet-cache-{s}.pkl" for s in ("train", "val", "test")}
CATEGORY_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}


class Pool(NamedTuple):
    """The images of one pickle and the indices of each class in it."""

    images: np.ndarray
    classes: dict[str, np.ndarray]
    named: bool
    """Whether the classes are named by wnid (False: by label, no ``catname2label``)."""


def read_pool(path: Path, kind: str) -> Pool:
    """One pickle of layout ``kind`` (``"cache"`` or ``"category"``) as a :class:`Pool`."""
    data = load_pickle(path, NAME, encoding="latin1")
    if kind == "cache":
        images = _images(_get(data, path, "image_data", "class_dict"), path, "image_data")
        return Pool(images, _class_dict(data["class_dict"], len(images), path), True)
    images = _images(_get(data, path, "data", "labels"), path, "data")
    labels = _labels(data["labels"], len(images), path)
    names = data.get("catname2label")
    if names is None:
        classes = {str(v): np.flatnonzero(labels == v) for v in np.unique(labels)}
        return Pool(images, classes, False)
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, np.integer)) for k, v in names.items()
    ):
        raise DatasetError(f"{NAME}: {path}: catname2label must map wnids to integer labels")
    return Pool(images, {w: np.flatnonzero(labels == v) for w, v in names.items()}, True)


def _get(data: Any, path: Path, images: str, index: str) -> Any:
    if not isinstance(data, dict) or images not in data or index not in data:
        found = sorted(map(str, data))[:6] if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{NAME}: {path} is not a dict with {images!r} and {index!r} (found {found}); "
            "see the layouts in docs/datasets-disk.md"
        )
    return data[images]


def _images(value: Any, path: Path, key: str) -> np.ndarray:
    images = np.asarray(value) if isinstance(value, np.ndarray) else None
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        what = f"{images.dtype} {images.shape}" if images is not None else type(value).__name__
        raise DatasetError(f"{NAME}: {path}: {key} must be uint8 [N, H, W, 3], got {what}")
    return images


def _labels(value: Any, count: int, path: Path) -> np.ndarray:
    try:
        labels = np.asarray(value)
    except (TypeError, ValueError):
        labels = np.asarray([])
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{NAME}: {path}: labels must be {count} integers (one per image), got "
            f"{labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


def _class_dict(value: Any, count: int, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise DatasetError(f"{NAME}: {path}: class_dict must be a dict {{wnid: [indices]}}")
    classes = {}
    for wnid, indices in value.items():
        index = np.asarray(indices, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= count):
            raise DatasetError(f"{NAME}: {path}: class_dict[{wnid!r}] indexes past image_data")
        classes[str(wnid)] = index
    return classes
