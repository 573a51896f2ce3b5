"""The decoded-tensor cache: where its files live, source fingerprints, atomic reads and writes.

The cache lives under ``cache_dir`` (option), else ``$FEWMASK_CACHE``, else ``~/.cache/fewmask``;
nothing is ever written next to the data. Each entry stores the fingerprint of the source it was
decoded from; an entry whose fingerprint no longer matches is decoded again and replaced.

An entry is two files: ``<split>-<digest>.pt`` (labels, class names, fingerprint, and the name
of the images file) and ``<split>-<digest>.<token>.npy``, the uint8 images as a plain NumPy
array. The images are memory-mapped read-only (``numpy.load(mmap_mode="r")``), never read in
full: an episode reads only the pages of its images, the operating system keeps what fits in
its page cache and drops the rest, and processes on one machine share it. So a split larger
than the memory a process may use still trains (``tests/test_large_datasets.py``). Writes are
atomic (temporary file, then ``os.replace``); the ``.pt`` file is written last and names its
``.npy`` file, so a reader never pairs labels with images of another write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from fewmask.datasets.images import Arrays
from fewmask.errors import DatasetError

CACHE_VERSION = 3


def cache_root(cache_dir: str | None) -> Path:
    """``cache_dir`` if given, else ``$FEWMASK_CACHE``, else ``~/.cache/fewmask``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FEWMASK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fewmask"


def cache_path(cache_dir: str | None, dataset: str, key: dict[str, Any]) -> Path:
    """``<cache>/<dataset>/<split>-<digest of key>.pt``."""
    text = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return cache_root(cache_dir) / dataset / f"{key.get('split', 'all')}-{digest}.pt"


def fingerprint(paths: Iterable[Path], dataset: str) -> str:
    """A digest of the sorted file paths with their sizes and modification times."""
    digest = hashlib.sha256()
    for name in sorted({os.path.abspath(p) for p in paths}):
        try:
            stat = os.stat(name)
        except OSError as exc:
            raise DatasetError(f"{dataset}: cannot read {name}: {exc.strerror or exc}") from None
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_cache(path: Path, source_fingerprint: str) -> Arrays | None:
    """The arrays cached at ``path`` if its fingerprint matches, with the images
    memory-mapped read-only; None when absent, stale, truncated or foreign."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: decode again
        return None
    if (
        not isinstance(data, dict)
        or data.get("version") != CACHE_VERSION
        or data.get("fingerprint") != source_fingerprint
    ):
        return None
    images = map_images(path.parent / str(data.get("images_file")), data.get("images_shape"))
    if images is None:
        return None
    return images, data["labels"], list(data["class_names"])


def map_images(file: Path, shape: Any) -> torch.Tensor | None:
    """The uint8 ``.npy`` array at ``file`` as a tensor over a read-only memory map, or None
    when the file is missing or not the array expected (shape, dtype, truncated)."""
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or list(array.shape) != list(shape or ()) or array.ndim != 4:
        return None
    if not array.flags.c_contiguous:
        return None
    with warnings.catch_warnings():
        # torch warns that the array is not writable: nothing writes into dataset images
        # (samplers gather copies); a write would fault instead of changing the cache
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


class ImagesFile:
    """The images file of one cache entry being decoded: :meth:`allocate` (given to
    ``images.allocating_with``) maps a new ``.npy`` file for the decoder to fill, so a split
    is written to the cache as it is decoded instead of being held in memory first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Path | None = None
        self.array: np.ndarray | None = None

    def allocate(self, shape: tuple[int, ...]) -> np.ndarray:
        """A writable memory-mapped uint8 array in the cache (memory if it cannot be made)."""
        if self.array is not None:  # one file per entry: a second array is ordinary memory
            return np.empty(shape, dtype=np.uint8)
        file = images_file_for(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.array = np.lib.format.open_memmap(file, "w+", np.uint8, shape)
        except OSError:  # write_cache warns about the folder
            return np.empty(shape, dtype=np.uint8)
        self.file = file
        return self.array

    def holds(self, images: torch.Tensor) -> bool:
        """Whether ``images`` is exactly the mapped array (the decoder returned it as is)."""
        return (
            self.array is not None
            and images.is_contiguous()
            and tuple(images.shape) == self.array.shape
            and images.data_ptr() == self.array.ctypes.data
        )

    def discard(self) -> None:
        """Remove the file (fewmask's own; no index names it)."""
        self.array = None
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.unlink(missing_ok=True)
            self.file = None


def write_cache(
    path: Path, source_fingerprint: str, arrays: Arrays, decoded_into: ImagesFile | None = None
) -> Arrays:
    """Store ``arrays`` atomically (the images as ``<stem>.<token>.npy``, then ``path``) and
    return them as later loads will see them: read back, the images mapped read-only.

    ``decoded_into``: the :class:`ImagesFile` the decoder wrote into; when the images are that
    array, its file becomes the entry's images file without another copy. A cache folder that
    cannot be written costs a warning, never the run (the decoded arrays are returned).
    """
    images, labels, names = arrays
    shape = tuple(images.shape)
    images_file: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if decoded_into is not None and decoded_into.holds(images):
            assert decoded_into.array is not None and decoded_into.file is not None
            decoded_into.array.flush()
            images_file = decoded_into.file
        else:
            if decoded_into is not None:
                decoded_into.discard()
            images_file = images_file_for(path)
            with _atomic(images_file) as file:
                np.save(file, images.contiguous().numpy(), allow_pickle=False)
        write_index(path, source_fingerprint, images_file, shape, labels, names)
    except OSError as exc:
        if decoded_into is not None:
            decoded_into.discard()  # the mapping stays valid for the arrays returned
        if images_file is not None:
            with contextlib.suppress(OSError):  # ours, and no index names it
                images_file.unlink(missing_ok=True)
        warnings.warn(
            f"fewmask: cannot write the dataset cache {path} ({exc}); set cache_dir or "
            "FEWMASK_CACHE to a writable folder to avoid decoding again",
            RuntimeWarning,
            stacklevel=3,
        )
        return arrays
    return read_cache(path, source_fingerprint) or arrays


def images_file_for(path: Path) -> Path:
    """A new name for the images file of the entry ``path``:
    ``<stem>.<start time in ns, hex>-<random>.npy`` (the time orders concurrent writes)."""
    return path.with_name(f"{path.stem}.{time.time_ns():x}-{os.urandom(4).hex()}.npy")


def _started(file: Path, stem: str) -> int:
    """The start time written in an images file's name (0 for a name without one)."""
    token = file.name[len(stem) + 1 : -len(".npy")]
    try:
        return int(token.split("-")[0], 16)
    except ValueError:
        return 0


def write_index(
    path: Path,
    source_fingerprint: str,
    images_file: Path,
    shape: tuple[int, ...],
    labels: torch.Tensor,
    names: Iterable[str],
) -> None:
    """Write the entry's ``.pt`` file naming ``images_file`` (already complete: a uint8
    ``.npy`` array of ``shape``), then remove the entry's images files of writes that started
    earlier (fewmask's own). Files of writes started later (another process decoding the same
    split right now) are left to that writer.

    For a split too large to decode in memory, write the images into
    ``numpy.lib.format.open_memmap(images_file, "w+", np.uint8, shape)`` piece by piece,
    flush, then call this.
    """
    entry = {
        "version": CACHE_VERSION,
        "fingerprint": source_fingerprint,
        "images_file": images_file.name,
        "images_shape": list(shape),
        "labels": labels.contiguous(),
        "class_names": [str(n) for n in names],
    }
    with _atomic(path) as file:
        torch.save(entry, file)
    ours = _started(images_file, path.stem)
    for old in path.parent.glob(f"{path.stem}.*.npy"):
        if old.name != images_file.name and _started(old, path.stem) < ours:
            old.unlink(missing_ok=True)


@contextmanager
def _atomic(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``target``, fsynced and renamed onto it when the block ends."""
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
