"""``aircraft``, ``vgg_flower`` and ``cars``: their native archives (unpacked) or class folders.

From the native archive, each source parses the archive's own metadata (text lists or MATLAB
``.mat`` files, read with scipy, imported only then) and crops to the bounding box where the
authors did (Aircraft, Cars). From class folders (``ROOT/<class>/*.jpg``) it matches the folders to
the split's classes by id or variant name and takes whole images. Either way the images are
squash-resized to ``image_size`` in 3 channels, and the classes are named and ordered the same.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from PIL import Image

from fewmask.datasets import layout
from fewmask.datasets.base import CachedSource, DownloadableConfig
from fewmask.datasets.images import Arrays, fit_image, new_images
from fewmask.errors import DatasetError
from fewmask.options import option

Box = tuple[int, int, int, int]
"""A bounding box as written in the archives: 1-based pixel coordinates, inclusive."""
Items = list[list[tuple[Path, Box | None]]]
"""The ``(image, box)`` pairs of each class."""

FOLDERS = "  or class folders: ROOT/<{what}>/*.{{jpg,jpeg,png}}, {how}"
AIRCRAFT_LAYOUT = """\
  ROOT/fgvc-aircraft-2013b/data/images/<id>.jpg
  ROOT/fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt   lines "<id> <variant>"
  ROOT/fgvc-aircraft-2013b/data/images_box.txt     lines "<id> xmin ymin xmax ymax" (1-based)
  (or ROOT = the fgvc-aircraft-2013b folder, or its data folder)
""" + FOLDERS.format(what="variant", how="'/' written as '_' (F-16A_B)")
FLOWER_LAYOUT = """\
  ROOT/jpg/image_00001.jpg ... image_08189.jpg
  ROOT/imagelabels.mat     (MATLAB: labels 1 x N, class ids 1..102; read with scipy)
""" + FOLDERS.format(what="id", how="id 1..102 as 7, 007, class_00007 or 007.<name>")
CARS_LAYOUT = """\
  ROOT/cars_train/<fname>.jpg
  ROOT/devkit/cars_train_annos.mat   (MATLAB struct array annotations: bbox_x1, bbox_y1,
                                      bbox_x2, bbox_y2, class 1..196, fname; read with scipy)
""" + FOLDERS.format(what="id", how="id 1..196 as 7, 007, class_00007 or 007.<name>")
VARIANT_FILES = tuple(f"images_variant_{s}.txt" for s in layout.SPLITS)
_ID = re.compile(r"^(?:class_?)?0*(\d+)(?:[._ -].*)?$")


# ----------------------------------------------------------------------------- decoding


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
    return np.asarray(fit_image(image, size, "squash"), dtype=np.uint8).transpose(2, 0, 1)


def decode_items(items: Items, dataset: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every ``(file, box)`` of every class; labels = class position."""
    total = sum(len(group) for group in items)
    images = new_images((total, 3, size, size))
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for label, group in enumerate(items):
        for path, box in group:
            images[i] = decode_cropped(path, box, dataset, size)
            labels[i] = label
            i += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def load_mat(path: Path, dataset: str, layout_text: str) -> dict[str, Any]:
    """A MATLAB v5 file through ``scipy.io.loadmat`` (scipy imported here, lazily)."""
    if not path.is_file():
        raise layout.layout_error(dataset, "missing MATLAB file", path, layout_text)
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
    """Integer class ids of a split list (ints, or strings of digits), sorted."""
    try:
        return sorted({int(str(e)) for e in entries})
    except ValueError:
        raise DatasetError(
            f"{dataset}: {where} must list integer class ids, got {entries[:5]!r}..."
        ) from None


def folder_key(name: str, numeric: bool) -> str | None:
    """The class a folder name stands for (None: none): an id, or a variant with '/' as '_'."""
    if numeric:
        match = _ID.match(name)
        return str(int(match.group(1))) if match else None
    return name


# ----------------------------------------------------------------------------- shared source


class FineGrainedSource(CachedSource):
    """Shared ``source_files``/``decode``: the split's ``(file, box)`` lists, from the native
    archive or from class folders."""

    numeric: ClassVar[bool] = True
    """Whether the classes are integer ids (named by the id) rather than names."""
    metadata: ClassVar[tuple[str, ...]] = ()

    def source_files(self, split: str) -> list[Path]:
        folder, native = self._where()
        _, items = self._items(split)
        files = [p for group in items for p, _ in group]
        if native:
            files += [folder / m for m in self.metadata]
        return files + layout.split_files(self.config.split_file, self.name)

    def decode(self, split: str) -> Arrays:
        names, items = self._items(split)
        images, labels = decode_items(items, self.name, self.config.image_size)
        return images, labels, names

    def _items(self, split: str) -> tuple[list[str], Items]:
        splits, where = layout.split_source(self.config.split_file, self.name, self.name)
        wanted = layout.split_classes(splits, split, self.name, where)
        names = (
            [str(i) for i in int_ids(wanted, self.name, where)]
            if self.numeric
            else sorted(map(str, wanted))
        )
        folder, native = self._where()
        if native:
            items = self._native_items(folder, names, split, where)
        else:
            items = self._folder_items(folder, names, split, where)
        for group in items:
            for path, _ in group:
                if not path.is_file():
                    raise self.layout_error("missing image", path)
        return names, items

    def _where(self) -> tuple[Path, bool]:
        """``(folder, True)`` for the native archive, ``(root, False)`` for class folders."""
        root = self.root_folder()
        native = self._native_folder(root)
        if native is not None:
            return native, True
        if layout.subfolders(root):
            return root, False
        raise self.layout_error("neither the native archive nor class folders in", root)

    def _folder_items(self, root: Path, names: list[str], split: str, where: str) -> Items:
        index: dict[str, Path] = {}
        for folder in layout.subfolders(root):
            key = folder_key(folder.name, self.numeric)
            if key is None:
                continue
            if key in index:
                raise DatasetError(
                    f"{self.name}: folders {index[key]} and {folder} both match class {key!r}"
                )
            index[key] = folder
        items = []
        for name in names:
            folder = index.get(name if self.numeric else name.replace("/", "_"))
            if folder is None:
                raise layout.missing_class(
                    self.name,
                    int(name) if self.numeric else name,
                    split,
                    where,
                    f"no matching class folder in {root}\nexpected layout:\n{self.layout}",
                )
            items.append([(p, None) for p in layout.list_images(folder, self.name)])
        return items

    def _native_folder(self, root: Path) -> Path | None:
        raise NotImplementedError

    def _native_items(self, folder: Path, names: list[str], split: str, where: str) -> Items:
        raise NotImplementedError


# ----------------------------------------------------------------------------- aircraft


@attrs.frozen
class AircraftConfig(DownloadableConfig):
    """Options of ``aircraft`` (FGVC-Aircraft 2013b, 100 variants, bbox-cropped)."""

    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of variant names '
        "replacing the built-in Meta-Dataset split",
    )
    image_size: int = option(32, ge=8, help="side length after the box crop (32 in the paper)")


class AircraftSource(FineGrainedSource):
    """FGVC-Aircraft variants, train+val+test images pooled, cropped to their box, 3x32x32."""

    name = "aircraft"
    layout = AIRCRAFT_LAYOUT
    downloads = "aircraft"
    numeric = False
    metadata = (*VARIANT_FILES, "images_box.txt")

    def _native_folder(self, root: Path) -> Path | None:
        candidates = (root / "fgvc-aircraft-2013b" / "data", root / "data", root)
        folder = layout.first_existing(candidates, ("images_box.txt", *VARIANT_FILES))
        if folder is None and (root / "fgvc-aircraft-2013b").is_dir():
            raise self.layout_error("no data/ folder in", root / "fgvc-aircraft-2013b")
        if folder is None:
            return None
        for f in (*self.metadata, "images"):
            if not (folder / f).exists():
                raise self.layout_error("missing FGVC-Aircraft file", folder / f)
        return folder

    def _native_items(self, folder: Path, names: list[str], split: str, where: str) -> Items:
        variants: dict[str, list[str]] = {}
        for f in VARIANT_FILES:
            for image_id, variant in self._lines(folder / f, 1):
                variants.setdefault(variant[0], []).append(image_id)
        boxes = {i: v for i, v in self._lines(folder / "images_box.txt", 4)}
        items = []
        for variant in names:
            if variant not in variants:
                why = f"no such variant in {folder}/images_variant_*.txt"
                raise layout.missing_class(self.name, variant, split, where, why)
            group = []
            for image_id in sorted(variants[variant]):
                if image_id not in boxes:
                    raise DatasetError(
                        f"{self.name}: image {image_id} has no box in {folder / 'images_box.txt'}"
                    )
                x1, y1, x2, y2 = (int(v) for v in boxes[image_id])
                group.append((folder / "images" / f"{image_id}.jpg", (x1, y1, x2, y2)))
            items.append(group)
        return items

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
                raise self.layout_error(f"malformed line {number} ({line!r}) in", path)
            out.append((parts[0], parts[1:]))
        return out


# ----------------------------------------------------------------------------- vgg_flower


@attrs.frozen
class VggFlowerConfig(DownloadableConfig):
    """Options of ``vgg_flower`` (Oxford 102 Flowers: jpg/ + imagelabels.mat, or class folders)."""

    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of integer labels 1..102 '
        "replacing the built-in Meta-Dataset split",
    )
    image_size: int = option(32, ge=8, help="side length (32 in the paper; whole image squashed)")


class VggFlowerSource(FineGrainedSource):
    """102 Flowers classes by ``imagelabels.mat`` label, whole images squashed, 3x32x32."""

    name = "vgg_flower"
    layout = FLOWER_LAYOUT
    downloads = "vgg_flower"
    metadata = ("imagelabels.mat",)

    def _native_folder(self, root: Path) -> Path | None:
        if not (root / "jpg").is_dir() and not (root / "imagelabels.mat").exists():
            return None
        if not (root / "jpg").is_dir():
            raise self.layout_error("missing image folder", root / "jpg")
        return root

    def _native_items(self, folder: Path, names: list[str], split: str, where: str) -> Items:
        mat_path = folder / "imagelabels.mat"
        mat = load_mat(mat_path, self.name, self.layout)
        try:
            labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
        except (KeyError, TypeError, ValueError):
            raise DatasetError(
                f"{self.name}: {mat_path} has no integer 'labels' array; expected layout:\n"
                f"{self.layout}"
            ) from None
        items = []
        for name in names:
            positions = np.flatnonzero(labels == int(name))
            if not len(positions):
                raise layout.missing_class(
                    self.name, int(name), split, where, f"no image has it in {mat_path}"
                )
            items.append(
                [(folder / "jpg" / f"image_{int(p) + 1:05d}.jpg", None) for p in positions]
            )
        return items


# ----------------------------------------------------------------------------- cars


@attrs.frozen
class CarsConfig(DownloadableConfig):
    """Options of ``cars`` (Stanford Cars: cars_train/ + devkit, bbox-cropped, or class folders)."""

    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of integer class ids 1..196 '
        "replacing the built-in split",
    )
    image_size: int = option(84, ge=8, help="side length after the box crop (84 in the paper)")


class CarsSource(FineGrainedSource):
    """Stanford Cars classes (devkit class ids), cars_train images cropped to their box, 3x84x84."""

    name = "cars"
    layout = CARS_LAYOUT
    downloads = "cars"
    metadata = ("devkit/cars_train_annos.mat",)
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")

    def _native_folder(self, root: Path) -> Path | None:
        if not (root / "cars_train").is_dir() and not (root / "devkit").is_dir():
            return None
        if not (root / "cars_train").is_dir():
            raise self.layout_error("missing image folder", root / "cars_train")
        return root

    def _native_items(self, folder: Path, names: list[str], split: str, where: str) -> Items:
        mat_path = folder / "devkit" / "cars_train_annos.mat"
        mat = load_mat(mat_path, self.name, self.layout)
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
                f"{', '.join(self.fields)}; expected layout:\n{self.layout}"
            ) from None
        by_class: dict[int, list[tuple[str, Box]]] = {}
        for cls, box, fname in zip(classes, boxes, fnames, strict=True):
            by_class.setdefault(cls, []).append((fname, box))  # type: ignore[arg-type]
        items = []
        for name in names:
            if int(name) not in by_class:
                raise layout.missing_class(
                    self.name, int(name), split, where, f"no annotation in {mat_path}"
                )
            group = sorted(by_class[int(name)])
            items.append([(folder / "cars_train" / f, b) for f, b in group])
        return items
