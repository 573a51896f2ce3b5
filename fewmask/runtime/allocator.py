"""glibc ``malloc`` settings for CPU meta-training (process-wide, opt-in).

By default glibc serves blocks above a (dynamic, at most 32 MiB) threshold with ``mmap`` and
returns them to the kernel on ``free``, so every large activation of every iteration is
page-faulted in again. :func:`tune_glibc_malloc` serves every block from the heap and never
trims it: freed blocks are reused without faults, at the cost of keeping the process's peak
heap resident. It is a no-op (returning False) where the C library is not glibc.

``train.tune_malloc: true`` applies it when :func:`fewmask.factory.build_trainer` builds a run; a
Trainer composed from Python objects leaves the allocator to its caller.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import warnings

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt options (malloc.h)
_MAX_INT = 2**31 - 1


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def is_glibc() -> bool:
    """Whether this process runs on glibc (where these settings apply)."""
    return _libc() is not None


def tune_glibc_malloc() -> bool:
    """No ``mmap`` for large blocks and no heap trimming; True if every setting was accepted."""
    libc = _libc()
    if libc is None:
        return False
    settings = [(M_MMAP_MAX, 0), (M_MMAP_THRESHOLD, _MAX_INT), (M_TRIM_THRESHOLD, _MAX_INT)]
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def apply_train_option(tune_malloc: bool) -> None:
    """Apply ``train.tune_malloc`` (called where a run is built, before its data is loaded):
    tune the allocator when asked, and warn where it is not glibc."""
    if tune_malloc and not tune_glibc_malloc():
        warnings.warn(
            "train.tune_malloc: not a glibc system; the allocator is unchanged", stacklevel=3
        )


def trim() -> bool:
    """Give free heap memory back to the kernel (``malloc_trim(0)``); False if not glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
