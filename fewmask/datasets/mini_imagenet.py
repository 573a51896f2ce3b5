"""``mini_imagenet``: miniImageNet from Ravi's csv files, the pickle caches or split folders."""

from __future__ import annotations

import csv
from pathlib import Path

import attrs
import numpy as np
import torch

from fewmask.datasets import common
from fewmask.errors import DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import option

NAME = "mini_imagenet"
LAYOUT = """\
  one of
  (a) ROOT/{train,val,test}.csv  (header filename,label; label = wnid)  +  ROOT/images/<filename>
  (b) ROOT/mini-imagenet-cache-{train,val,test}.pkl
      (dict: image_data uint8 [N, 84, 84, 3], class_dict {wnid: [indices]})
  (d) ROOT/{train,val,test}/<wnid>/*.jpg"""


@attrs.frozen
class MiniImageNetConfig:
    """Options of ``mini_imagenet``."""

    root: str = option(help="folder in one of the accepted layouts (csv+images, pkl, folders)")
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of wnids replacing the Ravi '
        "split (classes are then looked up in every split's files)",
    )
    image_size: int = option(84, ge=8, help="side length (images not of this size are resized)")
    cache_dir: str | None = option(
        None, help="where decoded tensors are cached (default $FEWMASK_CACHE or ~/.cache/fewmask)"
    )


def detect_layout(root: Path) -> str:
    """``"pkl"``, ``"csv"`` or ``"folders"``: the first layout with any of its files present."""
    if any((root / f"mini-imagenet-cache-{s}.pkl").is_file() for s in common.SPLITS):
        return "pkl"
    if any((root / f"{s}.csv").is_file() for s in common.SPLITS):
        if not (root / "images").is_dir():
            raise common.layout_error(
                NAME, "csv files found but the images/ folder is missing", root / "images", LAYOUT
            )
        return "csv"
    if any((root / s).is_dir() for s in common.SPLITS):
        return "folders"
    raise common.layout_error(NAME, "no miniImageNet layout found in", root, LAYOUT)


class MiniImageNetSource(DatasetSource):
    """100 ImageNet classes x 600 images, 3x84x84; Ravi & Larochelle's 64/16/20 split."""

    def __init__(self, config: MiniImageNetConfig):
        self.config = config

    def load(self, split: str) -> FewShotDataset:
        cfg = self.config
        common.check_split(split, self.splits, NAME)
        root = common.resolve_root(cfg.root, NAME, LAYOUT)
        layout = detect_layout(root)
        splits, where = common.split_source(cfg.split_file, NAME, NAME)
        wanted = sorted(map(str, common.split_classes(splits, split, NAME, where)))
        # the split's own files first; a custom split may take classes from the others too
        order = [split, *(s for s in common.SPLITS if s != split)] if cfg.split_file else [split]
        key = {
            "split": split,
            "root": common.key_root(root),
            "layout": layout,
            "classes": common.fingerprint_names(wanted),
            "size": cfg.image_size,
        }
        if layout == "pkl":
            pickles = [root / f"mini-imagenet-cache-{s}.pkl" for s in order]
            present = [p for p in pickles if p.is_file()]
            if not present:
                raise common.layout_error(NAME, "missing pickle", pickles[0], LAYOUT)
            fingerprint = common.fingerprint(present, NAME)

            def build() -> common.Arrays:
                return self._from_pickles(present, wanted, split, where)

        else:
            files = self._files(root, layout, order, wanted, split, where)
            fingerprint = common.fingerprint([f for group in files for f in group], NAME)

            def build() -> common.Arrays:
                images, labels = common.decode_classes(files, NAME, size=cfg.image_size, channels=3)
                return images, labels, wanted

        path = common.cache_path(cfg.cache_dir, NAME, key)
        arrays, _ = common.cached(path, fingerprint, build)
        return common.make_dataset(arrays, f"{NAME}/{split}")

    def _files(
        self, root: Path, layout: str, order: list[str], wanted: list[str], split: str, where: str
    ) -> list[list[Path]]:
        found: dict[str, list[Path]] = {}
        searched = []
        for part in order:
            if layout == "csv":
                table = root / f"{part}.csv"
                searched.append(table)
                if table.is_file():
                    for wnid, files in _read_csv(table, root / "images").items():
                        found.setdefault(wnid, files)
            else:
                folder = root / part
                searched.append(folder)
                if folder.is_dir():
                    for sub in common.subfolders(folder):
                        found.setdefault(sub.name, sub)  # type: ignore[arg-type]
        if not searched[0].exists():
            raise common.layout_error(NAME, f"split {split!r} is missing", searched[0], LAYOUT)
        result = []
        for wnid in wanted:
            if wnid not in found:
                raise DatasetError(
                    f"mini_imagenet: class {wnid!r} of split {split!r} ({where}) is missing on "
                    f"disk: not in {', '.join(map(str, searched))}"
                )
            entry = found[wnid]
            if layout == "folders":
                entry = common.list_images(entry, NAME)  # type: ignore[arg-type]
            result.append(entry)
        return result

    def _from_pickles(
        self, pickles: list[Path], wanted: list[str], split: str, where: str
    ) -> common.Arrays:
        size = self.config.image_size
        chunks: dict[str, np.ndarray] = {}
        for path in pickles:
            missing = [w for w in wanted if w not in chunks]
            if not missing:
                break
            data = common.load_pickle(path, NAME, encoding="latin1")
            try:
                images, class_dict = data["image_data"], data["class_dict"]
                images = np.asarray(images)
            except (KeyError, TypeError):
                raise DatasetError(
                    f"mini_imagenet: {path} is not a dict with image_data and class_dict; "
                    f"expected layout:\n{LAYOUT}"
                ) from None
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise DatasetError(
                    f"mini_imagenet: {path}: image_data must be uint8 [N, H, W, 3], got "
                    f"{images.dtype} {images.shape}"
                )
            for wnid in missing:
                if wnid in class_dict:
                    index = np.asarray(class_dict[wnid], dtype=np.int64)
                    if len(index) == 0:
                        raise DatasetError(f"mini_imagenet: class {wnid!r} has no images in {path}")
                    if index.min() < 0 or index.max() >= len(images):
                        raise DatasetError(
                            f"mini_imagenet: {path}: class_dict[{wnid!r}] indexes past image_data"
                        )
                    chunks[wnid] = common.resize_array(images[index].transpose(0, 3, 1, 2), size)
        for wnid in wanted:
            if wnid not in chunks:
                raise DatasetError(
                    f"mini_imagenet: class {wnid!r} of split {split!r} ({where}) is missing on "
                    f"disk: not in the class_dict of {', '.join(map(str, pickles))}"
                )
        parts = [chunks[w] for w in wanted]
        labels = np.repeat(np.arange(len(wanted)), [len(p) for p in parts])
        images = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
        return images, torch.from_numpy(labels), wanted


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
