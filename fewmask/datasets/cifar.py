"""``cifar_fs`` and ``fc100``: CIFAR-100's python pickles, pooled, split by class name."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch

from fewmask.datasets import layout
from fewmask.datasets.base import CachedSource, DownloadableConfig
from fewmask.datasets.images import Arrays
from fewmask.datasets.pickles import load_pickle
from fewmask.errors import DatasetError
from fewmask.options import option

FILES = ("train", "test", "meta")
LAYOUT = """\
  ROOT/cifar-100-python/train   (pickle: b'data' N x 3072 uint8 planar RGB, b'fine_labels')
  ROOT/cifar-100-python/test
  ROOT/cifar-100-python/meta    (pickle: b'fine_label_names')
  (or ROOT = the cifar-100-python folder itself)"""


@attrs.frozen
class CifarFSConfig(DownloadableConfig):
    """Options of ``cifar_fs`` (Bertinetto et al. 64/16/20 classes)."""

    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of CIFAR-100 fine label names '
        "replacing the built-in split",
    )


@attrs.frozen
class FC100Config(CifarFSConfig):
    """Options of ``fc100`` (Oreshkin et al. 60/20/20 classes by superclass)."""


class CifarFSSource(CachedSource):
    """CIFAR-100 classes, 600 images each (train + test pooled), 3x32x32."""

    name = "cifar_fs"
    layout = LAYOUT
    downloads = "cifar100"

    def source_files(self, split: str) -> list[Path]:
        folder = self._folder()
        return [folder / f for f in FILES] + layout.split_files(self.config.split_file, self.name)

    def decode(self, split: str) -> Arrays:
        folder = self._folder()
        files = {f: folder / f for f in FILES}
        wanted, where = layout.wanted_classes(self.config.split_file, self.name, split, self.name)
        return read_cifar(files, wanted, self.name, split, where)

    def _folder(self) -> Path:
        root = self.root_folder()
        folder = root / "cifar-100-python"
        if not folder.is_dir():
            if not any((root / f).exists() for f in FILES):
                raise self.layout_error("no cifar-100-python/ folder (or its pickles) in", root)
            folder = root
        for f in FILES:
            if not (folder / f).is_file():
                raise self.layout_error("missing CIFAR-100 pickle", folder / f)
        return folder


class FC100Source(CifarFSSource):
    """FC100: CIFAR-100 split by superclass (12/4/4 superclasses), 3x32x32."""

    name = "fc100"


def read_cifar(
    files: dict[str, Path], wanted: list[str], dataset: str, split: str, where: str
) -> Arrays:
    """Images of the ``wanted`` fine labels, train then test images of each class, in order."""
    meta = load_pickle(files["meta"], dataset)
    try:
        raw_names = meta[b"fine_label_names"]
        fine_names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    except (KeyError, TypeError, AttributeError):
        raise DatasetError(
            f"{dataset}: {files['meta']} has no b'fine_label_names' list; expected layout:\n"
            f"{LAYOUT}"
        ) from None
    index = {n: i for i, n in enumerate(fine_names)}
    for n in wanted:
        if n not in index:
            raise DatasetError(
                f"{dataset}: class {n!r} of split {split!r} ({where}) is missing on disk: not "
                f"among the fine_label_names of {files['meta']}"
            )
    datas, labels = [], []
    for part in ("train", "test"):
        batch = load_pickle(files[part], dataset)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            fine = np.asarray(batch[b"fine_labels"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{dataset}: {files[part]} lacks b'data' / b'fine_labels'; expected layout:\n"
                f"{LAYOUT}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data):
            raise DatasetError(
                f"{dataset}: {files[part]}: b'data' must be N x 3072 with one fine label per row, "
                f"got {data.shape} and {len(fine)} labels"
            )
        datas.append(data)
        labels.append(fine)
    data, fine = np.concatenate(datas), np.concatenate(labels)
    chosen = np.array([index[n] for n in wanted], dtype=np.int64)
    position = np.full(max(len(fine_names), int(fine.max(initial=0)) + 1), -1, dtype=np.int64)
    position[chosen] = np.arange(len(chosen))
    new_labels = position[fine]
    keep = np.flatnonzero(new_labels >= 0)
    keep = keep[np.argsort(new_labels[keep], kind="stable")]
    counts = np.bincount(new_labels[keep], minlength=len(wanted))
    if (counts == 0).any():
        empty = wanted[int(np.flatnonzero(counts == 0)[0])]
        raise DatasetError(
            f"{dataset}: class {empty!r} has no images in {files['train']} or {files['test']}"
        )
    images = torch.from_numpy(data[keep].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(new_labels[keep]), wanted
