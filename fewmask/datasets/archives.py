"""``aircraft``, ``vgg_flower`` and ``cars``: read straight from their native archives, unpacked.

Each source parses the archive's own metadata (text lists or MATLAB ``.mat`` files), selects the
images of a split's classes, crops them to their bounding box where the authors did (Aircraft,
Cars) and squash-resizes them to ``image_size`` (3 channels). ``.mat`` files need scipy, which is
imported only when one is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image

from fewmask.datasets import common
from fewmask.errors import DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import option

Box = tuple[int, int, int, int]
"""A bounding box as written in the archives: 1-based pixel coordinates, inclusive."""

CACHE_HELP = "where decoded tensors are cached (default $FEWMASK_CACHE or ~/.cache/fewmask)"

AIRCRAFT_LAYOUT = """\
  ROOT/fgvc-aircraft-2013b/data/images/<id>.jpg
  ROOT/fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt   lines "<id> <variant>"
  ROOT/fgvc-aircraft-2013b/data/images_box.txt     lines "<id> xmin ymin xmax ymax" (1-based)
  (or ROOT = the fgvc-aircraft-2013b folder, or its data folder)"""
FLOWER_LAYOUT = """\
  ROOT/jpg/image_00001.jpg ... image_08189.jpg
  ROOT/imagelabels.mat     (MATLAB: labels 1 x N, class ids 1..102; read with scipy)"""
CARS_LAYOUT = """\
  ROOT/cars_train/<fname>.jpg
  ROOT/devkit/cars_train_annos.mat   (MATLAB struct array annotations: bbox_x1, bbox_y1,
                                      bbox_x2, bbox_y2, class 1..196, fname; read with scipy)"""
VARIANT_FILES = tuple(f"images_variant_{s}.txt" for s in common.SPLITS)


# ----------------------------------------------------------------------------- helpers


def decode_cropped(path: Path, box: Box | None, dataset: str, size: int) -> np.ndarray:
    """One image as uint8 ``[3, size, size]``: cropped to ``box`` (if any), then squashed.

    The box is 1-based and inclusive (the archives' convention), clipped to the image.
    """
    try:
        with Image.open(path) as opened, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{dataset}: cannot decode image {path}: {exc}") from None
    if box is not None:
        width, height = image.size
        x1, y1, x2, y2 = box
        left, top = min(max(x1 - 1, 0), width - 1), min(max(y1 - 1, 0), height - 1)
        right, bottom = min(max(x2, left + 1), width), min(max(y2, top + 1), height)
        image = image.crop((left, top, right, bottom))
    return np.asarray(common.fit_image(image, size, "squash"), dtype=np.uint8).transpose(2, 0, 1)


def decode_items(
    items_by_class: list[list[tuple[Path, Box | None]]], dataset: str, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every ``(file, box)`` of every class; labels = class position."""
    import fewmask.datasets.archives as this  # looked up at call time, so tests can patch it

    total = sum(len(items) for items in items_by_class)
    images = np.empty((total, 3, size, size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for label, items in enumerate(items_by_class):
        for path, box in items:
            images[i] = this.decode_cropped(path, box, dataset, size)
            labels[i] = label
            i += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_mat(path: Path, dataset: str, layout: str) -> dict[str, Any]:
    """A MATLAB v5 file through ``scipy.io.loadmat`` (scipy imported here, lazily)."""
    if not path.is_file():
        raise common.layout_error(dataset, "missing MATLAB file", path, layout)
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(
            f"{dataset}: reading {path} needs scipy, which is not installed: pip install scipy"
        ) from None
    try:
        return loadmat(str(path))
    except Exception as exc:  # scipy raises its own MatReadError, ValueError, OSError, ...
        raise DatasetError(f"{dataset}: cannot read MATLAB file {path}: {exc}") from None


def int_ids(entries: list, dataset: str, where: str) -> list[int]:
    """Integer class ids of a split list (ints, or strings of digits)."""
    try:
        return sorted({int(str(e)) for e in entries})
    except ValueError:
        raise DatasetError(
            f"{dataset}: {where} must list integer class ids, got {entries[:5]!r}..."
        ) from None


def missing_class(dataset: str, name: Any, split: str, where: str, why: str) -> DatasetError:
    return DatasetError(
        f"{dataset}: class {name!r} of split {split!r} ({where}) is missing on disk: {why}"
    )


def check_files(items_by_class: list[list[tuple[Path, Any]]], dataset: str, layout: str) -> None:
    for items in items_by_class:
        for path, _ in items:
            if not path.is_file():
                raise common.layout_error(dataset, "missing image", path, layout)


class _ArchiveSource(DatasetSource):
    """Shared ``load``: resolve the split's ``(file, box)`` lists, then decode once and cache."""

    name = ""
    builtin = ""
    layout = ""
    metadata: tuple[str, ...] = ()

    def __init__(self, config: Any):
        self.config = config

    def load(self, split: str) -> FewShotDataset:
        cfg, name = self.config, self.name
        common.check_split(split, self.splits, name)
        folder = self._folder()
        splits, where = common.split_source(cfg.split_file, self.builtin, name)
        wanted = common.split_classes(splits, split, name, where)
        names, items = self._items(folder, wanted, split, where)
        check_files(items, name, self.layout)
        key = {
            "split": split,
            "root": common.key_root(folder),
            "classes": common.fingerprint_names(names),
            "size": cfg.image_size,
        }

        def build() -> common.Arrays:
            images, labels = decode_items(items, name, cfg.image_size)
            return images, labels, names

        files = [folder / m for m in self.metadata] + [p for group in items for p, _ in group]
        fingerprint = common.fingerprint(files, name)
        path = common.cache_path(cfg.cache_dir, name, key)
        arrays, _ = common.cached(path, fingerprint, build)
        return common.make_dataset(arrays, f"{name}/{split}")

    def _folder(self) -> Path:
        raise NotImplementedError

    def _items(
        self, folder: Path, wanted: list, split: str, where: str
    ) -> tuple[list[str], list[list[tuple[Path, Box | None]]]]:
        raise NotImplementedError


# ----------------------------------------------------------------------------- aircraft


@attrs.frozen
class AircraftConfig:
    """Options of ``aircraft`` (FGVC-Aircraft 2013b, 100 variants, bbox-cropped)."""

    root: str = option(
        help="folder holding fgvc-aircraft-2013b/ (or that folder, or its data/ folder)"
    )
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of variant names '
        "replacing the built-in Meta-Dataset split",
    )
    image_size: int = option(32, ge=8, help="side length after the box crop (32 in the paper)")
    cache_dir: str | None = option(None, help=CACHE_HELP)


class AircraftSource(_ArchiveSource):
    """FGVC-Aircraft variants, train+val+test images pooled, cropped to their box, 3x32x32."""

    name = "aircraft"
    builtin = "aircraft"
    layout = AIRCRAFT_LAYOUT
    metadata = (*VARIANT_FILES, "images_box.txt")

    def _folder(self) -> Path:
        root = common.resolve_root(self.config.root, self.name, AIRCRAFT_LAYOUT)
        for folder in (root / "fgvc-aircraft-2013b" / "data", root / "data", root):
            if (folder / "images").is_dir() or (folder / "images_box.txt").exists():
                break
        else:
            raise common.layout_error(
                self.name, "no fgvc-aircraft-2013b/data/ folder in", root, AIRCRAFT_LAYOUT
            )
        for f in (*self.metadata, "images"):
            if not (folder / f).exists():
                raise common.layout_error(
                    self.name, "missing FGVC-Aircraft file", folder / f, AIRCRAFT_LAYOUT
                )
        return folder

    def _items(self, folder, wanted, split, where):
        variants: dict[str, list[str]] = {}
        for f in VARIANT_FILES:
            for image_id, variant in self._lines(folder / f, 1):
                variants.setdefault(variant[0], []).append(image_id)
        boxes = {i: v for i, v in self._lines(folder / "images_box.txt", 4)}
        names = sorted(map(str, wanted))
        items = []
        for variant in names:
            if variant not in variants:
                raise missing_class(
                    self.name,
                    variant,
                    split,
                    where,
                    f"no such variant in {folder}/images_variant_*.txt",
                )
            group = []
            for image_id in sorted(variants[variant]):
                if image_id not in boxes:
                    raise DatasetError(
                        f"{self.name}: image {image_id} has no box in {folder / 'images_box.txt'}"
                    )
                x1, y1, x2, y2 = (int(v) for v in boxes[image_id])
                group.append((folder / "images" / f"{image_id}.jpg", (x1, y1, x2, y2)))
            items.append(group)
        return names, items

    def _lines(self, path: Path, fields: int) -> list[tuple[str, list[str]]]:
        """``(id, rest)`` of each non-empty line; ``fields=1`` keeps spaces inside the rest."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.name}: cannot read {path}: {exc}") from None
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1 if fields == 1 else -1)
            ok = len(parts) == fields + 1
            if ok and fields > 1:
                ok = all(p.lstrip("-").isdigit() for p in parts[1:])
            if not ok:
                raise common.layout_error(
                    self.name, f"malformed line {number} ({line!r}) in", path, AIRCRAFT_LAYOUT
                )
            out.append((parts[0], parts[1:]))
        return out


# ----------------------------------------------------------------------------- vgg_flower


@attrs.frozen
class VggFlowerConfig:
    """Options of ``vgg_flower`` (Oxford 102 Flowers from jpg/ + imagelabels.mat)."""

    root: str = option(help="folder holding jpg/ and imagelabels.mat")
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of integer labels 1..102 '
        "replacing the built-in Meta-Dataset split",
    )
    image_size: int = option(32, ge=8, help="side length (32 in the paper; whole image squashed)")
    cache_dir: str | None = option(None, help=CACHE_HELP)


class VggFlowerSource(_ArchiveSource):
    """102 Flowers classes by ``imagelabels.mat`` label, whole images squashed, 3x32x32."""

    name = "vgg_flower"
    builtin = "vgg_flower"
    layout = FLOWER_LAYOUT
    metadata = ("imagelabels.mat",)

    def _folder(self) -> Path:
        root = common.resolve_root(self.config.root, self.name, FLOWER_LAYOUT)
        if not (root / "jpg").is_dir():
            raise common.layout_error(
                self.name, "missing image folder", root / "jpg", FLOWER_LAYOUT
            )
        return root

    def _items(self, folder, wanted, split, where):
        mat_path = folder / "imagelabels.mat"
        mat = load_mat(mat_path, self.name, FLOWER_LAYOUT)
        try:
            labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{self.name}: {mat_path} has no integer 'labels' array; expected layout:\n"
                f"{FLOWER_LAYOUT}"
            ) from None
        ids = int_ids(wanted, self.name, where)
        items = []
        for label in ids:
            positions = np.flatnonzero(labels == label)
            if not len(positions):
                raise missing_class(
                    self.name, label, split, where, f"no image has it in {mat_path}"
                )
            items.append(
                [(folder / "jpg" / f"image_{int(p) + 1:05d}.jpg", None) for p in positions]
            )
        return [str(i) for i in ids], items


# ----------------------------------------------------------------------------- cars


@attrs.frozen
class CarsConfig:
    """Options of ``cars`` (Stanford Cars, cars_train images only, bbox-cropped)."""

    root: str = option(help="folder holding cars_train/ and devkit/")
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of integer class ids 1..196 '
        "replacing the built-in split",
    )
    image_size: int = option(84, ge=8, help="side length after the box crop (84 in the paper)")
    cache_dir: str | None = option(None, help=CACHE_HELP)


class CarsSource(_ArchiveSource):
    """Stanford Cars classes (devkit class ids), cars_train images cropped to their box, 3x84x84."""

    name = "cars"
    builtin = "cars"
    layout = CARS_LAYOUT
    metadata = ("devkit/cars_train_annos.mat",)
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")

    def _folder(self) -> Path:
        root = common.resolve_root(self.config.root, self.name, CARS_LAYOUT)
        if not (root / "cars_train").is_dir():
            raise common.layout_error(
                self.name, "missing image folder", root / "cars_train", CARS_LAYOUT
            )
        return root

    def _items(self, folder, wanted, split, where):
        mat_path = folder / "devkit" / "cars_train_annos.mat"
        mat = load_mat(mat_path, self.name, CARS_LAYOUT)
        try:
            records = np.asarray(mat["annotations"]).ravel()
            columns = {f: [np.asarray(v).ravel()[0] for v in records[f]] for f in self.fields}
            classes = [int(c) for c in columns["class"]]
            boxes = [
                tuple(int(columns[f][i]) for f in self.fields[:4]) for i in range(len(records))
            ]
            fnames = [str(f) for f in columns["fname"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise DatasetError(
                f"{self.name}: {mat_path} has no 'annotations' struct array with fields "
                f"{', '.join(self.fields)}; expected layout:\n{CARS_LAYOUT}"
            ) from None
        ids = int_ids(wanted, self.name, where)
        by_class: dict[int, list[tuple[str, Box]]] = {}
        for cls, box, fname in zip(classes, boxes, fnames, strict=True):
            by_class.setdefault(cls, []).append((fname, box))  # type: ignore[arg-type]
        items = []
        for cls in ids:
            if cls not in by_class:
                raise missing_class(self.name, cls, split, where, f"no annotation in {mat_path}")
            items.append([(folder / "cars_train" / f, b) for f, b in sorted(by_class[cls])])
        return [str(i) for i in ids], items


# ----------------------------------------------------------------------------- registration


def register(registry) -> None:
    """Register the native-archive loaders with a (scoped) registry."""
    registry.add_dataset(
        "aircraft",
        AircraftSource,
        config=AircraftConfig,
        description="FGVC-Aircraft 2013b archive, 100 variants bbox-cropped, 70/15/15, 3x32x32",
    )
    registry.add_dataset(
        "vgg_flower",
        VggFlowerSource,
        config=VggFlowerConfig,
        description="102 Flowers jpg/ + imagelabels.mat (needs scipy), 71/15/16, 3x32x32",
    )
    registry.add_dataset(
        "cars",
        CarsSource,
        config=CarsConfig,
        description="Stanford Cars cars_train/ + devkit .mat (scipy), bbox, 98/49/49, 3x84x84",
    )
