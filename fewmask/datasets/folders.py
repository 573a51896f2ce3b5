"""``image_folder``: one folder per class (CUB, Cars, VGG-Flower, Aircraft or your own data)."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from fewmask.datasets import common
from fewmask.errors import DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import option

NAME = "image_folder"
BUILTIN = ("cub", "cub_meta_dataset", "vgg_flower", "aircraft", "cars")
NUMERIC = ("vgg_flower", "cars")  # split files holding integer class ids
LAYOUT = """\
  one of
  ROOT/<class>/*.{jpg,jpeg,png}  + split_file: JSON {"train": [...], "val": [...], "test": [...]}
                                   of class folder names
  ROOT/<class>/*.{jpg,jpeg,png}  + split: cub | cub_meta_dataset | vgg_flower | aircraft | cars
      cub: folders 001.Black_footed_Albatross ... (CUB_200_2011/images/ or its parent also work)
      vgg_flower, cars: folders named by the class id 1..N: 1, 001, class_00001, 001.<name>
      aircraft: folders named by the variant, '/' written as '_' (F-16A_B)
  ROOT/{train,val,test}/<class>/*.{jpg,jpeg,png}"""
_ID = re.compile(r"^(?:class_?)?0*(\d+)(?:[._ -].*)?$")


@attrs.frozen
class ImageFolderConfig:
    """Options of ``image_folder``."""

    root: str = option(help="folder of class folders, or of train/ val/ test/ class folders")
    split: str | None = option(
        None,
        choices=BUILTIN,
        help="built-in standard class split to apply to ROOT/<class>/ folders",
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
    cache_dir: str | None = option(
        None, help="where decoded tensors are cached (default $FEWMASK_CACHE or ~/.cache/fewmask)"
    )


def folder_key(name: str, split: str) -> str | None:
    """How a folder name matches an entry of built-in split ``split`` (None: it cannot)."""
    if split in NUMERIC:
        match = _ID.match(name)
        return str(int(match.group(1))) if match else None
    return name


def entry_key(entry: str | int, split: str) -> str:
    """How a split-file entry is matched against :func:`folder_key` of the folders."""
    if split in NUMERIC:
        return str(int(entry))
    if split == "aircraft":
        return str(entry).replace("/", "_")
    return str(entry)


class ImageFolderSource(DatasetSource):
    """Generic class-per-folder images, resized to ``image_size`` squared."""

    def __init__(self, config: ImageFolderConfig):
        common.check_channels(config.channels, NAME)
        self.config = config

    def load(self, split: str) -> FewShotDataset:
        cfg = self.config
        common.check_split(split, self.splits, NAME)
        root = common.resolve_root(cfg.root, NAME, LAYOUT)
        classes = self._classes(root, split)
        files = [common.list_images(folder, NAME) for _, folder in classes]
        names = [name for name, _ in classes]
        key = {
            "split": split,
            "root": common.key_root(root),
            "classes": common.fingerprint_names(str(f) for _, f in classes),
            "size": cfg.image_size,
            "channels": cfg.channels,
            "resize": cfg.resize,
            "crop_scale": cfg.crop_scale if cfg.resize == "center_crop" else None,
        }

        def build() -> common.Arrays:
            images, labels = common.decode_classes(
                files,
                NAME,
                size=cfg.image_size,
                channels=cfg.channels,
                resize=cfg.resize,
                crop_scale=cfg.crop_scale,
            )
            return images, labels, names

        fingerprint = common.fingerprint([f for group in files for f in group], NAME)
        path = common.cache_path(cfg.cache_dir, NAME, key)
        arrays, _ = common.cached(path, fingerprint, build)
        return common.make_dataset(arrays, f"{NAME}/{split}")

    def _classes(self, root: Path, split: str) -> list[tuple[str, Path]]:
        """``(class name, folder)`` of every class of ``split``, in a fixed order."""
        cfg = self.config
        if cfg.split_file:
            splits = common.read_split_file(cfg.split_file, NAME)
            where = f"split file {cfg.split_file}"
            wanted = sorted(map(str, common.split_classes(splits, split, NAME, where)))
            return [(n, self._find(root / n, n, split, where)) for n in wanted]
        if cfg.split:
            return self._builtin(root, split)
        if any((root / s).is_dir() for s in common.SPLITS):
            folder = root / split
            if not folder.is_dir():
                raise common.layout_error(
                    NAME, f"split {split!r} folder is missing", folder, LAYOUT
                )
            classes = [(f.name, f) for f in common.subfolders(folder)]
            if not classes:
                raise common.layout_error(NAME, "no class folders in", folder, LAYOUT)
            return classes
        raise common.layout_error(
            NAME,
            "no split: set the split or split_file option, or use train/ val/ test/ folders in",
            root,
            LAYOUT,
        )

    def _find(self, folder: Path, name: str, split: str, where: str) -> Path:
        if not folder.is_dir():
            raise DatasetError(
                f"image_folder: class {name!r} of split {split!r} ({where}) is missing on disk: "
                f"no folder {folder}"
            )
        return folder

    def _builtin(self, root: Path, split: str) -> list[tuple[str, Path]]:
        which = self.config.split
        assert which is not None
        splits = common.builtin_split(which)
        where = f"the built-in {which} split"
        wanted = common.split_classes(splits, split, NAME, where)
        base = root
        if which.startswith("cub"):
            for candidate in (root / "images", root / "CUB_200_2011" / "images"):
                if not (root / str(wanted[0])).is_dir() and candidate.is_dir():
                    base = candidate
                    break
        index: dict[str, Path] = {}
        for folder in common.subfolders(base):
            key = folder_key(folder.name, which)
            if key is None:
                continue
            if key in index:
                raise DatasetError(
                    f"image_folder: folders {index[key]} and {folder} both match class {key!r} "
                    f"of {where}"
                )
            index[key] = folder
        classes = []
        for entry in wanted:
            folder = index.get(entry_key(entry, which))
            if folder is None:
                raise DatasetError(
                    f"image_folder: class {entry!r} of split {split!r} ({where}) is missing on "
                    f"disk: no matching folder in {base}\nexpected layout:\n{LAYOUT}"
                )
            classes.append((folder.name, folder))
        return sorted(classes, key=lambda c: c[0])
