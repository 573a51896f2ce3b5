"""``omniglot``: Omniglot unpacked (torchvision's layout) or as its two original zips.

Each of the two parts (``images_background``, ``images_evaluation``) is read from its folder when
there is one, else straight from its zip: nothing is extracted into the user's folder. Vinyals or
Lake split; optional x4 rotations (applied after the cache).
"""

from __future__ import annotations

import zipfile
import zlib
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import attrs
import numpy as np
import torch

from fewmask.datasets import layout
from fewmask.datasets.base import CachedSource, DownloadableConfig
from fewmask.datasets.images import Arrays, decode_image, new_images, rotated_classes
from fewmask.errors import DatasetError
from fewmask.options import option

NAME = "omniglot"
PARTS = {"background": "images_background", "evaluation": "images_evaluation"}
LAYOUT = """\
  ROOT/omniglot-py/images_background/<Alphabet>/characterNN/*.png   (30 alphabets)
  ROOT/omniglot-py/images_evaluation/<Alphabet>/characterNN/*.png   (20 alphabets)
  or the two original zips, not unzipped:
  ROOT/omniglot-py/images_background.zip   holding images_background/<Alphabet>/characterNN/*.png
  ROOT/omniglot-py/images_evaluation.zip   holding images_evaluation/<Alphabet>/characterNN/*.png
  (ROOT itself may hold the folders or zips instead of omniglot-py/)"""


class Member(NamedTuple):
    """One image inside a zip."""

    archive: Path
    name: str

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


Item = Path | Member
Classes = dict[str, Path | list[Member]]
"""``{"Alphabet/characterNN": its folder, or its zip members (sorted)}``"""


@attrs.frozen
class OmniglotConfig(DownloadableConfig):
    """Options of ``omniglot``."""

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

    def check(self) -> dict[str, str]:
        problems = DownloadableConfig.check(self)
        if self.split_scheme == "lake" and self.split_file:
            problems["split_file"] = (
                "replaces the Vinyals lists; it cannot be combined with split_scheme 'lake'"
            )
        return problems


class OmniglotSource(CachedSource):
    """Handwritten characters of 50 alphabets, 20 drawings each, as white ink on black."""

    name = NAME
    layout = LAYOUT
    after_cache = ("rotations",)
    downloads = "omniglot"

    def __init__(self, config: OmniglotConfig):
        super().__init__(config)
        self.splits = ("train", "test") if config.split_scheme == "lake" else layout.SPLITS

    def check_split(self, split: str) -> None:
        if self.config.split_scheme == "lake" and split == "val":
            raise DatasetError(
                "omniglot: split_scheme 'lake' has no 'val' split (images_background = train, "
                "images_evaluation = test); use split_scheme: vinyals for a validation split"
            )
        super().check_split(split)

    def source_files(self, split: str) -> list[Path]:
        files = [i for _, items in self._classes(split) for i in items if isinstance(i, Path)]
        files += [p for p in map(self._part_path, self._parts(split)) if p.suffix == ".zip"]
        if self.config.split_scheme == "vinyals":
            files += layout.split_files(self.config.split_file, NAME)
        return files

    def decode(self, split: str) -> Arrays:
        classes = self._classes(split)
        size = self.config.image_size
        total = sum(len(items) for _, items in classes)
        images = new_images((total, 1, size, size))
        labels = np.empty(total, dtype=np.int64)
        i = 0
        with ExitStack() as stack:
            archives: dict[Path, zipfile.ZipFile] = {}
            for label, (_, items) in enumerate(classes):
                for item in items:
                    data = None
                    if isinstance(item, Member):
                        if item.archive not in archives:
                            archives[item.archive] = stack.enter_context(open_zip(item.archive))
                        data = read_member(archives[item.archive], item)
                    images[i] = decode_image(
                        str(item), NAME, size=size, channels=1, invert=True, data=data
                    )
                    labels[i] = label
                    i += 1
        names = [name for name, _ in classes]
        return torch.from_numpy(images), torch.from_numpy(labels), names

    def finish(self, arrays: Arrays) -> Arrays:
        if self.config.rotations:
            return rotated_classes(arrays, "{name}/rot{angle:03d}")
        return arrays

    # ------------------------------------------------------------------ where the classes are

    def _parts(self, split: str) -> list[str]:
        """The parts a split needs: Lake's reads one, Vinyals' mixes both."""
        if self.config.split_scheme == "lake":
            return ["background" if split == "train" else "evaluation"]
        return list(PARTS)

    def _base(self) -> Path:
        root = self.root_folder()
        entries = [n for folder in PARTS.values() for n in (folder, f"{folder}.zip")]
        base = layout.first_existing([root / "omniglot-py", root], entries)
        if base is None:
            raise self.layout_error(
                "no images_background/ or images_evaluation/ folder (or .zip) under", root
            )
        return base

    def _part_path(self, kind: str) -> Path:
        """The folder of part ``kind``, else its zip; neither is an error naming both."""
        base = self._base()
        folder = base / PARTS[kind]
        if folder.is_dir():
            return folder
        archive = base / f"{PARTS[kind]}.zip"
        if archive.is_file():
            return archive
        raise self.layout_error(
            f"split_scheme {self.config.split_scheme!r} needs the {kind} folder (or its zip), "
            f"missing",
            folder,
        )

    def _part(self, kind: str) -> Classes:
        where = self._part_path(kind)
        found = zip_classes(where, PARTS[kind]) if where.suffix == ".zip" else folder_classes(where)
        if not found:
            raise self.layout_error("no character folders in", where)
        return found

    def _classes(self, split: str) -> list[tuple[str, list[Item]]]:
        """``("Alphabet/characterNN", images)`` of every class of ``split``, in a fixed order."""
        if self.config.split_scheme == "lake":
            part = self._part(self._parts(split)[0])
            chosen = sorted(part.items(), key=lambda c: c[0].split("/"))
        else:
            parts = [self._part(kind) for kind in PARTS]
            wanted, where = layout.wanted_classes(self.config.split_file, NAME, split, NAME)
            chosen = []
            for name in wanted:
                found = [part[name] for part in parts if name in part]
                if not found:
                    searched = " or ".join(str(self._part_path(k)) for k in PARTS)
                    raise layout.missing_class(NAME, name, split, where, f"not in {searched}")
                chosen.append((name, found[0]))
        return [(name, images_of(entry)) for name, entry in chosen]


def images_of(entry: Path | list[Member]) -> list[Item]:
    """The images of one character: its folder's files, or its zip members."""
    if isinstance(entry, Path):
        return list(layout.list_images(entry, NAME, "character"))
    return list(entry)


def folder_classes(folder: Path) -> Classes:
    """The character folders of an unpacked part: ``<Alphabet>/characterNN/``."""
    return {
        f"{alphabet.name}/{char.name}": char
        for alphabet in layout.subfolders(folder)
        for char in layout.subfolders(alphabet)
    }


def zip_classes(archive: Path, top: str) -> Classes:
    """The classes of a part's zip: members ``<top>/<Alphabet>/characterNN/*.png``."""
    with open_zip(archive) as opened:
        names = opened.namelist()
    found: Classes = {}
    for member in sorted(names):
        parts = PurePosixPath(member).parts
        if len(parts) == 4 and parts[0] == top and layout.is_image_name(member):
            entry = found.setdefault(f"{parts[1]}/{parts[2]}", [])
            entry.append(Member(archive, member))  # type: ignore[union-attr]
    if not found and names:
        tops = sorted({PurePosixPath(n).parts[0] for n in names if n.strip("/")})[:3]
        raise layout.layout_error(
            NAME,
            f"no {top}/<Alphabet>/<characterNN>/*.png inside (it holds {', '.join(tops)}) the zip",
            archive,
            LAYOUT,
        )
    return found


def open_zip(archive: Path) -> zipfile.ZipFile:
    """An opened zip; a truncated or foreign file is an error naming it."""
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetError(
            f"{NAME}: {archive} is not a readable zip archive (truncated or another kind of "
            f"file?): {exc}; expected layout:\n{LAYOUT}"
        ) from None


def read_member(opened: zipfile.ZipFile, member: Member) -> bytes:
    """The bytes of one member; a corrupt or truncated archive is an error naming both."""
    try:
        return opened.read(member.name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        raise DatasetError(
            f"{NAME}: cannot read {member.name} from {member.archive} (truncated or corrupt "
            f"zip?): {exc}"
        ) from None
