"""Where a loader's data is: class splits (shipped or user files), the root, folder listings.

Every helper raises a :class:`~fewmask.errors.DatasetError` that names the path at fault and,
where a layout is given, shows the layout the loader expected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from fewmask.errors import DatasetError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_FILE_SHAPE = '{"train": [...], "val": [...], "test": [...]}'


# ----------------------------------------------------------------------------- class splits


def builtin_split(name: str) -> dict[str, Any]:
    """A shipped standard split (``fewmask/datasets/splits/<name>.json``), with its ``source``."""
    text = builtin_split_file(name).read_text(encoding="utf-8")
    return json.loads(text)


def builtin_split_file(name: str) -> Any:
    """The shipped file of split ``name`` (a ``Path`` for an ordinary install)."""
    return resources.files("fewmask.datasets").joinpath("splits", f"{name}.json")


def read_split_file(path: str, dataset: str) -> dict[str, list]:
    """A user split file: JSON ``{"train": [...], "val": [...], "test": [...]}``."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            f"{dataset}: split file {file} does not exist; expected a JSON file {SPLIT_FILE_SHAPE}"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{dataset}: cannot read split file {file}: {exc}; expected JSON {SPLIT_FILE_SHAPE}"
        ) from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise DatasetError(
            f"{dataset}: split file {file} must hold a JSON object {SPLIT_FILE_SHAPE}"
        )
    for split in SPLITS:
        classes = data.get(split, [])
        if not isinstance(classes, list) or not all(
            isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes
        ):
            raise DatasetError(
                f"{dataset}: split file {file}: {split!r} must be a list of class names"
            )
        for name in classes:
            if _escapes_root(str(name)):
                raise DatasetError(
                    f"{dataset}: split file {file}: class {str(name)!r} of split {split!r} is "
                    "not a name inside the data root (absolute paths, '..' and NUL are refused)"
                )
    return data


def _escapes_root(name: str) -> bool:
    """Whether a class name, used as a path below the root, could point outside it (or is no
    path at all)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or "\0" in name


def split_classes(splits: dict[str, Any], split: str, dataset: str, where: str) -> list:
    """The class list of ``split`` from a split mapping; an absent or empty list is an error."""
    classes = splits.get(split)
    if not classes:
        raise DatasetError(f"{dataset}: {where} lists no classes for split {split!r}")
    if len(set(map(str, classes))) != len(classes):
        raise DatasetError(f"{dataset}: {where} lists a class twice in split {split!r}")
    return list(classes)


def split_source(split_file: str | None, builtin: str, dataset: str) -> tuple[dict, str]:
    """The split mapping to use and a description of where it came from (for messages)."""
    if split_file:
        return read_split_file(split_file, dataset), f"split file {split_file}"
    return builtin_split(builtin), f"the built-in {builtin} split"


def wanted_classes(split_file: str | None, builtin: str, split: str, dataset: str):
    """``(classes, where)``: the class list of ``split`` as strings, sorted, and its source."""
    splits, where = split_source(split_file, builtin, dataset)
    return sorted(map(str, split_classes(splits, split, dataset, where))), where


def split_files(split_file: str | None, builtin: str) -> list[Path]:
    """The file a class split is read from, for a source fingerprint (edited splits re-decode)."""
    if split_file:
        return [Path(split_file).expanduser()]
    shipped = builtin_split_file(builtin)
    return [shipped] if isinstance(shipped, Path) else []


def missing_class(dataset: str, name: Any, split: str, where: str, why: str) -> DatasetError:
    """A class that the split names but the data lacks."""
    return DatasetError(
        f"{dataset}: class {name!r} of split {split!r} ({where}) is missing on disk: {why}"
    )


# ----------------------------------------------------------------------------- root and folders


def resolve_root(root: str | None, dataset: str, layout: str) -> Path:
    """The ``root`` option as an existing directory, or an error showing the expected layout."""
    if not root:
        raise DatasetError(f"{dataset}: no root given; expected layout:\n{layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise layout_error(dataset, f"root {what}", path, layout)
    return path


def layout_error(dataset: str, problem: str, path: Path | str, layout: str) -> DatasetError:
    """A :class:`DatasetError` naming ``path`` and showing the expected layout."""
    return DatasetError(f"{dataset}: {problem}: {path}\nexpected layout:\n{layout}")


def list_images(folder: Path, dataset: str, what: str = "class") -> list[Path]:
    """Sorted ``.jpg``/``.jpeg``/``.png`` files directly inside ``folder``; none is an error."""
    try:
        files = sorted(p for p in folder.iterdir() if is_image_name(p.name) and p.is_file())
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot list {what} folder {folder}: {exc}") from None
    if not files:
        raise DatasetError(
            f"{dataset}: {what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image suffixes (any case)."""
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def subfolders(folder: Path) -> list[Path]:
    """Sorted sub-directories of ``folder`` (hidden ones skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def first_existing(candidates: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first candidate folder holding any of ``names``, or None."""
    for folder in candidates:
        if any((folder / name).exists() for name in names):
            return folder
    return None
