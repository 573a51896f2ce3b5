"""``mini_imagenet``: miniImageNet from Ravi's csv files, either pickle layout, or split folders."""

from __future__ import annotations

import csv
from pathlib import Path

import attrs
import numpy as np
import torch

from fewmask.datasets import layout
from fewmask.datasets.base import CachedSource, CachedSourceConfig
from fewmask.datasets.images import Arrays, decode_classes, resize_array
from fewmask.datasets.mini_imagenet_pickles import CACHE_FILES, CATEGORY_FILES, read_pool
from fewmask.errors import DatasetError
from fewmask.options import option

NAME = "mini_imagenet"
PICKLES = {"cache": CACHE_FILES, "category": CATEGORY_FILES}
LAYOUT = """\
  one of
  (b) ROOT/mini-imagenet-cache-{train,val,test}.pkl
      (dict: image_data uint8 [N, 84, 84, 3], class_dict {wnid: [indices]})
  (c) ROOT/miniImageNet_category_split_{train_phase_train,val,test}.pickle   (MetaOptNet's;
      dict: data uint8 [N, 84, 84, 3], labels [N], catname2label {wnid: label})
  (a) ROOT/{train,val,test}.csv  (header filename,label; label = wnid)  +  ROOT/images/<filename>
  (d) ROOT/{train,val,test}/<wnid>/*.jpg"""


@attrs.frozen
class MiniImageNetConfig(CachedSourceConfig):
    """Options of ``mini_imagenet``."""

    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of wnids replacing the Ravi '
        "split (classes are then looked up in every split's files)",
    )
    image_size: int = option(84, ge=8, help="side length (images not of this size are resized)")


def detect_layout(root: Path) -> str:
    """``cache``, ``category``, ``csv`` or ``folders``: the first with any of its files present."""
    for kind, files in PICKLES.items():
        if any((root / f).is_file() for f in files.values()):
            return kind
    if any((root / f"{s}.csv").is_file() for s in layout.SPLITS):
        if not (root / "images").is_dir():
            raise layout.layout_error(
                NAME, "csv files found but the images/ folder is missing", root / "images", LAYOUT
            )
        return "csv"
    if any((root / s).is_dir() for s in layout.SPLITS):
        return "folders"
    raise layout.layout_error(NAME, "no miniImageNet layout found in", root, LAYOUT)


class MiniImageNetSource(CachedSource):
    """100 ImageNet classes x 600 images, 3x84x84; Ravi & Larochelle's 64/16/20 split."""

    name = NAME
    layout = LAYOUT

    def source_files(self, split: str) -> list[Path]:
        root = self.root_folder()
        kind = detect_layout(root)
        if kind in PICKLES:
            files = self._pickles(root, kind, split)
        else:
            files = [f for group in self._files(root, kind, split) for f in group]
        return files + layout.split_files(self.config.split_file, NAME)

    def decode(self, split: str) -> Arrays:
        root = self.root_folder()
        kind = detect_layout(root)
        if kind in PICKLES:
            return self._from_pickles(self._pickles(root, kind, split), kind, split)
        files = self._files(root, kind, split)
        images, labels = decode_classes(files, NAME, size=self.config.image_size, channels=3)
        return images, labels, self._wanted(split)[0]

    def _wanted(self, split: str) -> tuple[list[str], str]:
        return layout.wanted_classes(self.config.split_file, NAME, split, NAME)

    def _order(self, split: str) -> list[str]:
        """The split's own files first; a custom split may take classes from the others too."""
        others = [s for s in layout.SPLITS if s != split]
        return [split, *others] if self.config.split_file else [split]

    def _pickles(self, root: Path, kind: str, split: str) -> list[Path]:
        pickles = [root / PICKLES[kind][s] for s in self._order(split)]
        present = [p for p in pickles if p.is_file()]
        if not present:
            raise self.layout_error("missing pickle", pickles[0])
        return present

    def _from_pickles(self, pickles: list[Path], kind: str, split: str) -> Arrays:
        wanted, where = self._wanted(split)
        chunks: dict[str, np.ndarray] = {}
        for path in pickles:
            if all(w in chunks for w in wanted):
                break
            pool = read_pool(path, kind)
            if not pool.named:  # a category pickle without catname2label: its labels
                if self.config.split_file:
                    raise DatasetError(
                        f"{NAME}: {path} has no catname2label, so its classes have no wnids "
                        "for split_file to name; leave split_file out to use its labels"
                    )
                wanted, where = sorted(pool.classes, key=int), f"the labels of {path}"
            for wnid in wanted:
                if wnid in chunks or wnid not in pool.classes:
                    continue
                index = pool.classes[wnid]
                if len(index) == 0:
                    raise DatasetError(f"{NAME}: class {wnid!r} has no images in {path}")
                images = pool.images[index].transpose(0, 3, 1, 2)
                chunks[wnid] = resize_array(images, self.config.image_size)
        for wnid in wanted:
            if wnid not in chunks:
                searched = ", ".join(map(str, pickles))
                raise layout.missing_class(NAME, wnid, split, where, f"not in {searched}")
        parts = [chunks[w] for w in wanted]
        labels = np.repeat(np.arange(len(wanted)), [len(p) for p in parts])
        images = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
        return images, torch.from_numpy(labels), wanted

    def _files(self, root: Path, kind: str, split: str) -> list[list[Path]]:
        wanted, where = self._wanted(split)
        found: dict[str, list[Path] | Path] = {}
        searched = []
        for part in self._order(split):
            if kind == "csv":
                table = root / f"{part}.csv"
                searched.append(table)
                if table.is_file():
                    for wnid, files in _read_csv(table, root / "images").items():
                        found.setdefault(wnid, files)
            else:
                folder = root / part
                searched.append(folder)
                if folder.is_dir():
                    for sub in layout.subfolders(folder):
                        found.setdefault(sub.name, sub)
        if not searched[0].exists():
            raise self.layout_error(f"split {split!r} is missing", searched[0])
        result = []
        for wnid in wanted:
            if wnid not in found:
                why = f"not in {', '.join(map(str, searched))}"
                raise layout.missing_class(NAME, wnid, split, where, why)
            entry = found[wnid]
            result.append(layout.list_images(entry, NAME) if isinstance(entry, Path) else entry)
        return result


def _read_csv(table: Path, images: Path) -> dict[str, list[Path]]:
    """``{wnid: [image paths]}`` of a Ravi csv file, in file order; listed images must exist."""
    by_class: dict[str, list[Path]] = {}
    try:
        with open(table, newline="") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"mini_imagenet: cannot read {table}: {exc}") from None
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and row[:2] == ["filename", "label"]):
            continue
        if len(row) != 2:
            raise DatasetError(
                f"mini_imagenet: {table} line {number}: expected 'filename,label', got {row}"
            )
        path = images / row[0]
        if not path.is_file():
            raise DatasetError(
                f"mini_imagenet: image {path} listed in {table} line {number} is missing"
            )
        by_class.setdefault(row[1], []).append(path)
    return by_class
