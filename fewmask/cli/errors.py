"""How the ``fewmask`` command reports a failure: one message, an exit status, no traceback.

Every :class:`~fewmask.errors.FewmaskError` carries its exit status (2: bad input, 1: a failure
at run time) and a message that names the path and the fix. The errors of the operating system
and of PyTorch that a run can meet (no permission, a full disk, out of memory) become the same
kind of message with status 1. Anything else is a bug: one line saying so, status 1. ``--debug``
(or ``FEWMASK_DEBUG=1``) prints the traceback as well.

Warnings of fewmask (:class:`~fewmask.errors.FewmaskWarning`) print as ``fewmask: warning: ...``.
"""

from __future__ import annotations

import errno
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from fewmask.errors import ConfigError, FewmaskError, FewmaskWarning, UnknownComponentError

_FIXES = {
    errno.EACCES: "check the permissions of the file or folder, or choose another",
    errno.EPERM: "check the permissions of the file or folder, or choose another",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.ENOSPC: "free disk space (or choose another folder), then resume the run",
    errno.EFBIG: "the file would exceed the largest file allowed (the process's file-size limit, "
    "ulimit -f, or the file system's); raise the limit, then resume the run",
    errno.EDQUOT: "free disk space in your quota, then resume the run",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a file stands where a folder is expected; choose another path",
    errno.EISDIR: "a folder stands where a file is expected; choose another path",
}


def report(exc: BaseException, debug: bool = False, stream: TextIO | None = None) -> int:
    """Print ``exc`` as the command's one message (with the traceback under ``debug``) and
    return the exit status."""
    stream = stream or sys.stderr
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    message, status = describe(exc)
    print(f"fewmask: {message}", file=stream)
    if message.startswith(INTERNAL) and not debug:  # a bug: the only failure to report
        print("fewmask: rerun with --debug for the traceback, and report it", file=stream)
    return status


def describe(exc: BaseException) -> tuple[str, int]:
    """``(message, exit status)`` of an exception the command did not handle itself."""
    if isinstance(exc, ConfigError):
        return f"config error: {exc}", exc.exit_code
    if isinstance(exc, UnknownComponentError):
        return str(exc), exc.exit_code
    if isinstance(exc, FewmaskError):
        return f"{type(exc).__name__}: {exc}", exc.exit_code
    if isinstance(exc, OSError):
        return _os_error(exc), 1
    if isinstance(exc, MemoryError) or _is_out_of_memory(exc):
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return (
            f"ResourceError: out of memory{f' ({first})' if first else ''}; the memory "
            "estimate checked before training is a lower bound, and this run needs more: make "
            "the backbone, ways, shots, queries, inner steps or meta_batch_size smaller, or use "
            "a device with more memory",
            1,
        )
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    return f"{INTERNAL} {type(exc).__name__}: {first}", 1


INTERNAL = "internal error:"
"""How a bug (and only a bug) is announced."""


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = " ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
    fix = _FIXES.get(exc.errno or 0)
    return f"{type(exc).__name__}: {where + ': ' if where else ''}{reason}" + (
        f"; {fix}" if fix else ""
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    out_of_memory = getattr(torch, "OutOfMemoryError", None)
    if out_of_memory is not None and isinstance(exc, out_of_memory):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


@contextmanager
def thread_failures_reported(debug: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """Inside: an exception that ends a background thread (TensorBoard's writer on a full disk)
    is one ``fewmask: warning:`` line, not a traceback (``debug``: the traceback too); the
    command fails on its own when it next needs that thread, with the path and the fix."""
    original = threading.excepthook

    def hook(info: threading.ExceptHookArgs) -> None:
        out = stream or sys.stderr
        if debug:
            original(info)
        name = info.thread.name if info.thread is not None else "a thread"
        message, _ = describe(info.exc_value) if info.exc_value else ("stopped", 1)
        print(f"fewmask: warning: background thread {name} stopped: {message}", file=out)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = original


@contextmanager
def shown_warnings(stream: TextIO | None = None) -> Iterator[None]:
    """Inside: every FewmaskWarning is printed once per message as ``fewmask: warning: ...``
    (never turned into an error by a warnings filter); other warnings as usual."""
    stream = stream or sys.stderr
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, FewmaskWarning):
            print(f"fewmask: warning: {message}", file=stream)
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("default", FewmaskWarning)
        warnings.showwarning = show
        yield
