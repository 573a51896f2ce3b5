"""``image_folder``: one folder per class (CUB, your own data), resized to a square.

VGG-Flower, Aircraft and Cars in class folders are read by their own loaders
(:mod:`fewmask.datasets.fine_grained`), which also read their native archives.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from fewmask.datasets import layout
from fewmask.datasets.base import CachedSource, CachedSourceConfig
from fewmask.datasets.images import Arrays, decode_classes
from fewmask.errors import DatasetError
from fewmask.options import option

NAME = "image_folder"
BUILTIN = ("cub", "cub_meta_dataset")
MOVED = ("vgg_flower", "aircraft", "cars")  # splits now served by the loader of that name
LAYOUT = """\
  one of
  ROOT/<class>/*.{jpg,jpeg,png}  + split_file: JSON {"train": [...], "val": [...], "test": [...]}
                                   of class folder names
  ROOT/<class>/*.{jpg,jpeg,png}  + split: cub | cub_meta_dataset
      (folders 001.Black_footed_Albatross ...; CUB_200_2011/images/ or its parent also work)
  ROOT/{train,val,test}/<class>/*.{jpg,jpeg,png}"""


@attrs.frozen
class ImageFolderConfig(CachedSourceConfig):
    """Options of ``image_folder``."""

    split: str | None = option(
        None,
        help="built-in standard class split to apply to ROOT/<class>/ folders: cub (100/50/50) "
        "or cub_meta_dataset (140/30/30)",
    )
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of class folder names '
        "(takes precedence over split)",
    )
    image_size: int = option(84, ge=8, help="side length: 84 (CUB, Cars) or 32 (Flower, Aircraft)")
    channels: int = option(3, ge=1, le=3, help="3: RGB; 1: grayscale (2 is rejected)")
    resize: str = option(
        "squash",
        choices=("squash", "center_crop"),
        help="squash to the square; or center_crop: shorter side to image_size x crop_scale, "
        "then the centre crop",
    )
    crop_scale: float = option(1.5, ge=1.0, help="center_crop: resize to this x image_size first")

    def check(self) -> dict[str, str]:
        problems = CachedSourceConfig.check(self)
        if self.channels == 2:
            problems["channels"] = "must be 1 (grayscale) or 3 (RGB), got 2"
        if self.split in MOVED:
            problems["split"] = (
                f"class folders of {self.split} are read by the {self.split!r} dataset, which also "
                f"reads the native archive: dataset: {{name: {self.split}, options: {{root: ...}}}}"
            )
        elif self.split is not None and self.split not in BUILTIN:
            problems["split"] = f"{self.split!r} is not one of {', '.join(map(repr, BUILTIN))}"
        return problems


class ImageFolderSource(CachedSource):
    """Generic class-per-folder images, resized to ``image_size`` squared."""

    name = NAME
    layout = LAYOUT

    def source_files(self, split: str) -> list[Path]:
        files = [f for _, _, group in self._classes(split) for f in group]
        if self.config.split_file or self.config.split:
            files += layout.split_files(self.config.split_file, self.config.split or "cub")
        return files

    def decode(self, split: str) -> Arrays:
        cfg = self.config
        classes = self._classes(split)
        images, labels = decode_classes(
            [files for _, _, files in classes],
            NAME,
            size=cfg.image_size,
            channels=cfg.channels,
            resize=cfg.resize,
            crop_scale=cfg.crop_scale,
        )
        return images, labels, [name for name, _, _ in classes]

    def _classes(self, split: str) -> list[tuple[str, Path, list[Path]]]:
        """``(class name, folder, images)`` of every class of ``split``, in a fixed order."""
        return [(n, f, layout.list_images(f, NAME)) for n, f in self._folders(split)]

    def _folders(self, split: str) -> list[tuple[str, Path]]:
        cfg = self.config
        root = self.root_folder()
        if cfg.split_file:
            splits = layout.read_split_file(cfg.split_file, NAME)
            where = f"split file {cfg.split_file}"
            wanted = sorted(map(str, layout.split_classes(splits, split, NAME, where)))
            return [(n, self._find(root / n, n, split, where)) for n in wanted]
        if cfg.split:
            return self._builtin(root, split)
        if any((root / s).is_dir() for s in layout.SPLITS):
            folder = root / split
            if not folder.is_dir():
                raise self.layout_error(f"split {split!r} folder is missing", folder)
            classes = [(f.name, f) for f in layout.subfolders(folder)]
            if not classes:
                raise self.layout_error("no class folders in", folder)
            return classes
        raise self.layout_error(
            "no split: set the split or split_file option, or use train/ val/ test/ folders in",
            root,
        )

    def _find(self, folder: Path, name: str, split: str, where: str) -> Path:
        if not folder.is_dir():
            raise layout.missing_class(NAME, name, split, where, f"no folder {folder}")
        return folder

    def _builtin(self, root: Path, split: str) -> list[tuple[str, Path]]:
        which = self.config.split
        assert which is not None
        splits = layout.builtin_split(which)
        where = f"the built-in {which} split"
        wanted = sorted(map(str, layout.split_classes(splits, split, NAME, where)))
        base = root
        for candidate in (root / "images", root / "CUB_200_2011" / "images"):
            if not (root / wanted[0]).is_dir() and candidate.is_dir():
                base = candidate
                break
        classes = []
        for name in wanted:
            if not (base / name).is_dir():
                raise DatasetError(
                    f"image_folder: class {name!r} of split {split!r} ({where}) is missing on "
                    f"disk: no folder {base / name}\nexpected layout:\n{LAYOUT}"
                )
            classes.append((name, base / name))
        return classes
