"""The decoded-tensor cache: where its files live, source fingerprints, atomic reads and writes.

The cache lives under ``cache_dir`` (option), else ``$FEWMASK_CACHE``, else ``~/.cache/fewmask``;
nothing is ever written next to the data. Each file stores the fingerprint of the source it was
decoded from; a file whose fingerprint no longer matches is decoded again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fewmask.datasets.images import Arrays
from fewmask.errors import DatasetError

CACHE_VERSION = 2


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
    """The arrays cached at ``path`` if its fingerprint matches; None when absent or stale."""
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
    return data["images"], data["labels"], list(data["class_names"])


def write_cache(path: Path, source_fingerprint: str, arrays: Arrays) -> None:
    """Store ``arrays`` atomically (temporary file, then ``os.replace``).

    A cache folder that cannot be written costs a warning, never the run.
    """
    images, labels, names = arrays
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
