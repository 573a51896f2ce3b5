"""Data pickles (CIFAR batches, miniImageNet files) read with a restricted unpickler.

Only plain containers and numpy arrays are rebuilt, so a data file cannot run code; pickles
written by Python 2 are read with ``encoding='latin1'`` (or ``'bytes'``, as CIFAR's are).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fewmask.errors import DatasetError


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


class DataUnpickler(pickle.Unpickler):
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
    """The object in a data pickle; an unreadable, truncated or foreign file names ``path``."""
    try:
        with open(path, "rb") as file:
            return DataUnpickler(file, encoding=encoding).load()
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
    ) as exc:
        raise DatasetError(
            f"{dataset}: cannot read pickle {path}: {type(exc).__name__}: {exc}"
        ) from None
