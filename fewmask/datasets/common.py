"""Shared machinery of the on-disk loaders: split lists, layout errors, decoding, the tensor cache.

Every loader follows the same path: resolve the source files of one split (cheap: directory
listings and ``stat``), fingerprint them, and either read the decoded uint8 tensors from the cache
or decode once and write the cache atomically. The cache lives under ``cache_dir`` (option), else
``$FEWMASK_CACHE``, else ``~/.cache/fewmask``; nothing is ever written next to the data.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from fewmask.errors import DatasetError
from fewmask.interfaces import FewShotDataset

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1
SPLIT_FILE_SHAPE = '{"train": [...], "val": [...], "test": [...]}'

Arrays = tuple[torch.Tensor, torch.Tensor, list[str]]
"""Decoded split: uint8 images ``[N, C, H, W]``, int64 labels ``[N]``, class names."""


# ----------------------------------------------------------------------------- splits


def builtin_split(name: str) -> dict[str, Any]:
    """A shipped standard split (``fewmask/datasets/splits/<name>.json``), with its ``source``."""
    text = (
        resources.files("fewmask.datasets")
        .joinpath("splits", f"{name}.json")
        .read_text(encoding="utf-8")
    )
    return json.loads(text)


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
    return data


def check_split(split: str, valid: Sequence[str], dataset: str) -> None:
    """Raise for a split name this source does not serve, listing the valid ones."""
    if split not in valid:
        raise DatasetError(f"{dataset}: unknown split {split!r}; splits: {', '.join(valid)}")


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


# ----------------------------------------------------------------------------- layout


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
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
    except OSError as exc:
        raise DatasetError(f"{dataset}: cannot list {what} folder {folder}: {exc}") from None
    if not files:
        raise DatasetError(
            f"{dataset}: {what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def subfolders(folder: Path) -> list[Path]:
    """Sorted sub-directories of ``folder`` (hidden ones skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ----------------------------------------------------------------------------- decoding


def decode_image(
    path: Path,
    dataset: str,
    *,
    size: int,
    channels: int,
    resize: str = "squash",
    crop_scale: float = 1.5,
    invert: bool = False,
) -> np.ndarray:
    """One image file as uint8 ``[channels, size, size]``.

    ``squash`` resizes to ``size x size`` (aspect ratio not kept); ``center_crop`` resizes the
    shorter side to ``round(size * crop_scale)`` keeping the aspect ratio, then crops the centre
    ``size x size``. Resampling is PIL's BILINEAR (antialiased when shrinking).
    """
    try:
        with Image.open(path) as opened, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notes of some PNGs
            image = opened.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{dataset}: cannot decode image {path}: {exc}") from None
    image = fit_image(image, size, resize, crop_scale)
    array = np.asarray(image, dtype=np.uint8)
    if invert:
        array = 255 - array
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def fit_image(image: Image.Image, size: int, resize: str = "squash", crop_scale: float = 1.5):
    """Resize a PIL image to ``size x size`` (see :func:`decode_image`)."""
    if resize == "squash":
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return image
    width, height = image.size
    scale = max(size, round(size * crop_scale)) / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """Squash-resize uint8 ``[N, C, H, W]`` (C = 1 or 3) to ``size x size`` with PIL BILINEAR."""
    if images.shape[-2:] == (size, size):
        return images
    out = np.empty((*images.shape[:2], size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return out


def decode_classes(
    files_by_class: Sequence[Sequence[Path]], dataset: str, **decode_options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every file of every class into ``(images, labels)``, labels = class position.

    Calls :func:`decode_image` through this module, so tests can count or forbid decoding.
    """
    import fewmask.datasets.common as this

    size, channels = decode_options["size"], decode_options["channels"]
    total = sum(len(files) for files in files_by_class)
    images = np.empty((total, channels, size, size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    i = 0
    for label, files in enumerate(files_by_class):
        for path in files:
            images[i] = this.decode_image(path, dataset, **decode_options)
            labels[i] = label
            i += 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def check_channels(channels: int, dataset: str) -> None:
    """Only 1 (grayscale) and 3 (RGB) channels exist."""
    if channels not in (1, 3):
        raise DatasetError(f"{dataset}: channels must be 1 (grayscale) or 3 (RGB), got {channels}")


def with_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Replicate 1-channel images to ``channels`` (3: grayscale as RGB)."""
    if images.shape[1] == channels:
        return images
    return images.expand(-1, channels, -1, -1).contiguous()


# ----------------------------------------------------------------------------- pickles


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file cannot run code."""

    allowed: ClassVar[dict[tuple[str, str], Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not self.allowed:
            type(self).allowed = _numpy_globals()
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (only numpy arrays and plain data are read)"
            ) from None


def load_pickle(path: Path, dataset: str, encoding: str = "bytes") -> Any:
    """A data pickle (CIFAR batches, miniImageNet caches) read with a restricted unpickler."""
    try:
        with open(path, "rb") as file:
            return _DataUnpickler(file, encoding=encoding).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DatasetError(f"{dataset}: cannot read pickle {path}: {exc}") from None


# ----------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir`` if given, else ``$FEWMASK_CACHE``, else ``~/.cache/fewmask``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEWMASK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fewmask"


def fingerprint(paths: Iterable[Path], dataset: str) -> str:
    """A digest of the sorted file paths with their sizes and modification times."""
    digest = hashlib.sha256()
    for name in sorted(os.path.abspath(p) for p in paths):
        try:
            stat = os.stat(name)
        except OSError as exc:
            raise DatasetError(f"{dataset}: cannot read {name}: {exc}") from None
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str | None, dataset: str, key: dict[str, Any]) -> Path:
    """Where the decoded tensors of ``key`` (dataset, split, root, pixel options) live."""
    text = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return cache_root(cache_dir) / dataset / f"{key.get('split', 'all')}-{digest}.pt"


def cached(path: Path, source_fingerprint: str, build: Callable[[], Arrays]) -> tuple[Arrays, bool]:
    """The cached arrays at ``path`` if their fingerprint matches, else ``build()`` and store.

    Returns ``(arrays, hit)``. An unreadable or stale cache file is rebuilt; a cache directory
    that cannot be written only costs a warning.
    """
    entry = _read_cache(path, source_fingerprint)
    if entry is not None:
        return entry, True
    images, labels, names = build()
    _write_cache(path, source_fingerprint, images, labels, names)
    return (images, labels, names), False


def _read_cache(path: Path, source_fingerprint: str) -> Arrays | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: rebuild it
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != CACHE_VERSION
        or data.get("fingerprint") != source_fingerprint
    ):
        return None
    return data["images"], data["labels"], list(data["class_names"])


def _write_cache(
    path: Path, source_fingerprint: str, images: torch.Tensor, labels: torch.Tensor, names: list
) -> None:
    entry = {
        "version": CACHE_VERSION,
        "fingerprint": source_fingerprint,
        "images": images.contiguous(),
        "labels": labels.contiguous(),
        "class_names": [str(n) for n in names],
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            torch.save(entry, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        warnings.warn(
            f"fewmask: cannot write the dataset cache {path} ({exc}); set cache_dir or "
            "FEWMASK_CACHE to a writable folder to avoid decoding again",
            RuntimeWarning,
            stacklevel=3,
        )


def make_dataset(arrays: Arrays, name: str) -> FewShotDataset:
    images, labels, names = arrays
    return FewShotDataset(
        images=images.contiguous(), labels=labels, class_names=tuple(names), name=name
    )


def key_root(path: Path) -> str:
    """The root as it enters a cache key (absolute, symlinks resolved)."""
    return str(path.resolve())


def fingerprint_names(names: Iterable[Any]) -> str:
    """A short digest of a class list (part of a cache key, so split files do not collide)."""
    return hashlib.sha256("\n".join(map(str, names)).encode()).hexdigest()[:16]
