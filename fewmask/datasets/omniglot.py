"""``omniglot``: Omniglot in torchvision's unpacked layout; Vinyals or Lake split; x4 rotations."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from fewmask.datasets import common
from fewmask.errors import DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import option

NAME = "omniglot"
FOLDERS = {"background": "images_background", "evaluation": "images_evaluation"}
LAYOUT = """\
  ROOT/omniglot-py/images_background/<Alphabet>/characterNN/*.png   (30 alphabets)
  ROOT/omniglot-py/images_evaluation/<Alphabet>/characterNN/*.png   (20 alphabets)
  (or ROOT itself holding images_background/ and images_evaluation/; unzip the original zips)"""


@attrs.frozen
class OmniglotConfig:
    """Options of ``omniglot``."""

    root: str = option(help="folder holding omniglot-py/ (torchvision's layout) or its contents")
    split_scheme: str = option(
        "vinyals",
        choices=("vinyals", "lake"),
        help="vinyals: 1028/172/423 characters (train/val/test); lake: background=train, "
        "evaluation=test, no val",
    )
    split_file: str | None = option(
        None,
        help='JSON {"train": [...], "val": [...], "test": [...]} of "Alphabet/characterNN" '
        "replacing the built-in Vinyals lists",
    )
    rotations: bool = option(
        True, help="add 90/180/270-degree rotations of every class as new classes (x4)"
    )
    image_size: int = option(28, ge=4, help="side length after resizing (PIL BILINEAR)")
    cache_dir: str | None = option(
        None, help="where decoded tensors are cached (default $FEWMASK_CACHE or ~/.cache/fewmask)"
    )


class OmniglotSource(DatasetSource):
    """Handwritten characters of 50 alphabets, 20 drawings each, as white ink on black."""

    def __init__(self, config: OmniglotConfig):
        self.config = config
        self.splits = ("train", "test") if config.split_scheme == "lake" else common.SPLITS

    def load(self, split: str) -> FewShotDataset:
        cfg = self.config
        if cfg.split_scheme == "lake" and split == "val":
            raise DatasetError(
                "omniglot: split_scheme 'lake' has no 'val' split (images_background = train, "
                "images_evaluation = test); use split_scheme: vinyals for a validation split"
            )
        common.check_split(split, self.splits, NAME)
        if cfg.split_scheme == "lake" and cfg.split_file:
            raise DatasetError(
                "omniglot: split_file replaces the Vinyals lists; it cannot be combined with "
                "split_scheme 'lake'"
            )
        base = self._images_root()
        folders = self._class_folders(base, split)
        files = [common.list_images(folder, NAME, "character") for _, folder in folders]
        names = [name for name, _ in folders]
        key = {
            "split": split,
            "root": common.key_root(base),
            "scheme": cfg.split_scheme,
            "classes": common.fingerprint_names(names),
            "size": cfg.image_size,
        }

        def build() -> common.Arrays:
            images, labels = common.decode_classes(
                files, NAME, size=cfg.image_size, channels=1, invert=True
            )
            return images, labels, names

        fingerprint = common.fingerprint([f for group in files for f in group], NAME)
        path = common.cache_path(cfg.cache_dir, NAME, key)
        (images, labels, names), _ = common.cached(path, fingerprint, build)
        if cfg.rotations:
            count = len(names)
            images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
            labels = torch.cat([labels + k * count for k in range(4)])
            names = [f"{n}/rot{90 * k:03d}" for k in range(4) for n in names]
        return common.make_dataset((images, labels, names), f"{NAME}/{split}")

    def _images_root(self) -> Path:
        root = common.resolve_root(self.config.root, NAME, LAYOUT)
        for candidate in (root / "omniglot-py", root):
            if any((candidate / folder).is_dir() for folder in FOLDERS.values()):
                return candidate
        zips = sorted(p.name for p in root.glob("images_*.zip"))
        hint = f" (found {', '.join(zips)}: unzip them there)" if zips else ""
        raise common.layout_error(
            NAME, f"no images_background/ or images_evaluation/ folder{hint} under", root, LAYOUT
        )

    def _require(self, base: Path, kind: str) -> Path:
        folder = base / FOLDERS[kind]
        if not folder.is_dir():
            raise common.layout_error(
                NAME,
                f"split_scheme {self.config.split_scheme!r} needs the {kind} folder, missing",
                folder,
                LAYOUT,
            )
        return folder

    def _class_folders(self, base: Path, split: str) -> list[tuple[str, Path]]:
        """``("Alphabet/characterNN", folder)`` of every class of ``split``, sorted by name."""
        if self.config.split_scheme == "lake":
            folder = self._require(base, "background" if split == "train" else "evaluation")
            classes = [
                (f"{alphabet.name}/{char.name}", char)
                for alphabet in common.subfolders(folder)
                for char in common.subfolders(alphabet)
            ]
            if not classes:
                raise common.layout_error(NAME, "no character folders in", folder, LAYOUT)
            return classes
        searched = [self._require(base, kind) for kind in FOLDERS]
        splits, where = common.split_source(self.config.split_file, NAME, NAME)
        wanted = sorted(map(str, common.split_classes(splits, split, NAME, where)))
        classes = []
        for name in wanted:
            found = [folder / name for folder in searched if (folder / name).is_dir()]
            if not found:
                raise DatasetError(
                    f"omniglot: class {name!r} of split {split!r} ({where}) is missing on disk: "
                    f"no folder {searched[0] / name} or {searched[1] / name}"
                )
            classes.append((name, found[0]))
        return classes
