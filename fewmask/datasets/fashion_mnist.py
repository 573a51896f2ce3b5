"""``fashion_mnist``: Fashion-MNIST's IDX files as a 10-class cross-domain meta-test target."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import attrs
import numpy as np
import torch

from fewmask.datasets.base import CachedSource, DownloadableConfig
from fewmask.datasets.images import Arrays, resize_array, with_channels
from fewmask.errors import DatasetError
from fewmask.options import option

NAME = "fashion_mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
PARTS = {  # (images, labels) file stems
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
DEBIAN_ROOTS = (  # where `apt-get install dataset-fashion-mnist` puts the files (Debian 12)
    "/usr/share/datasets/fashion-mnist",
    "/usr/share/dataset-fashion-mnist",
    "/usr/share/dataset-fashion-mnist/data/fashion",
    "/usr/share/dataset-fashion-mnist/fashion",
)
LAYOUT = """\
  ROOT/train-images-idx3-ubyte[.gz]  ROOT/train-labels-idx1-ubyte[.gz]
  ROOT/t10k-images-idx3-ubyte[.gz]   ROOT/t10k-labels-idx1-ubyte[.gz]
  (also ROOT/FashionMNIST/raw/ as torchvision stores them; default ROOT: the Debian package
  dataset-fashion-mnist, /usr/share/datasets/fashion-mnist on Debian 12)"""


@attrs.frozen
class FashionMNISTConfig(DownloadableConfig):
    """Options of ``fashion_mnist``."""

    root: str | None = option(
        None,
        help="folder of the four IDX files (default: the Debian package dataset-fashion-mnist)",
    )
    image_size: int = option(28, ge=4, help="side length (28: as stored; else PIL BILINEAR)")
    channels: int = option(1, ge=1, le=3, help="1: grayscale; 3: replicated to RGB (2 is rejected)")

    def check(self) -> dict[str, str]:
        problems = DownloadableConfig.check(self)
        if self.channels == 2:
            problems["channels"] = "must be 1 (grayscale) or 3 (RGB), got 2"
        if self.download and not self.root:
            problems["download"] = "needs root, the folder to download into"
        return problems


def find_files(folder: Path) -> dict[str, Path] | None:
    """``{stem: path}`` of the four IDX files in ``folder`` (gz preferred), None if none exist."""
    found = {}
    for stems in PARTS.values():
        for stem in stems:
            for name in (f"{stem}.gz", stem):
                if (folder / name).is_file():
                    found[stem] = folder / name
                    break
    return found or None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped): big-endian magic, dims, then uint8 data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                raw = file.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"fashion_mnist: cannot read {path}: {exc}") from None
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        raise DatasetError(
            f"fashion_mnist: {path} is not an IDX file of this kind: magic {found}, "
            f"expected {magic}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"fashion_mnist: {path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(dims)):
        raise DatasetError(
            f"fashion_mnist: {path} is truncated or padded: {data.size} bytes of data for "
            f"dimensions {dims}"
        )
    return data.reshape(dims)


class FashionMNISTSource(CachedSource):
    """All 70,000 Fashion-MNIST images pooled into 10 classes; every split name gives them all."""

    name = NAME
    layout = LAYOUT
    after_cache = ("channels",)
    downloads = "fashion_mnist"

    def cache_key(self, split: str) -> dict:
        return super().cache_key("all")  # every split is the same data: one cache file

    def source_files(self, split: str) -> list[Path]:
        return list(self._files().values())

    def decode(self, split: str) -> Arrays:
        files = self._files()
        images, labels = [], []
        for image_stem, label_stem in PARTS.values():
            x = read_idx(files[image_stem], IMAGES_MAGIC)
            y = read_idx(files[label_stem], LABELS_MAGIC)
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise DatasetError(
                    f"fashion_mnist: {files[image_stem]} ({x.shape}) and "
                    f"{files[label_stem]} ({y.shape}) do not match"
                )
            images.append(x)
            labels.append(y)
        x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
        if y.max(initial=0) >= len(CLASSES):
            raise DatasetError(
                f"fashion_mnist: label {int(y.max())} out of range 0..9 in "
                f"{files[PARTS['train'][1]].parent}"
            )
        order = np.argsort(y, kind="stable")
        x = resize_array(x[order][:, None], self.config.image_size)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y[order]), list(CLASSES)

    def finish(self, arrays: Arrays) -> Arrays:
        images, labels, names = arrays
        return with_channels(images, self.config.channels), labels, names

    def _files(self) -> dict[str, Path]:
        if self.config.root:
            root = self.root_folder()
            candidates = [root, root / "FashionMNIST" / "raw", root / "raw"]
        else:
            candidates = [Path(p) for p in DEBIAN_ROOTS]
            if candidates[0].is_dir():  # whatever sub-folder the package uses
                candidates += sorted(
                    {f.parent for f in candidates[0].rglob(f"{PARTS['train'][0]}*")}
                )
        for folder in candidates:
            found = find_files(folder)
            if found is None:
                continue
            for stems in PARTS.values():
                for stem in stems:
                    if stem not in found:
                        raise self.layout_error("missing IDX file", folder / f"{stem}.gz")
            return found
        if self.config.root:
            raise self.layout_error("no Fashion-MNIST IDX files in", candidates[0])
        raise DatasetError(
            "fashion_mnist: no root given and the Debian package dataset-fashion-mnist is not "
            f"installed (looked in {', '.join(DEBIAN_ROOTS)}); `apt-get install "
            f"dataset-fashion-mnist` or set root; expected layout:\n{LAYOUT}"
        )
