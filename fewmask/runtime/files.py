"""The one way fewmask opens a file it writes in a run folder: never through a planted link.

A run folder may be shared, or hold files someone else put there. A symbolic link named like a
file of the run (``run.lock -> ~/notes.txt``) would make a plain ``open(..., "w")`` write the
run's data into the file it points to; so would a hard link to another file. Every writer of a
run folder (the lock, results, the stop record, the config copy, ``resumes.jsonl``,
``metrics.jsonl``) opens its file with :func:`open_run_file`, which opens the name itself
(``O_NOFOLLOW``, no blocking on a FIFO), checks that it is a regular file with one link, and only
then truncates it. Anything else is a :class:`~fewmask.errors.RunFileError` naming the file and
leaves it untouched. Checkpoints are written to a fresh temporary file renamed over the name
(:mod:`fewmask.runtime.checkpoint`), which replaces a link rather than following it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Any

from fewmask.errors import RunFileError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_MODES = {
    "w": os.O_WRONLY | os.O_CREAT,  # truncated once checked
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "r+": os.O_RDWR | os.O_CREAT,  # the lock: read and written in place, never truncated here
}


def open_run_fd(path: str | os.PathLike[str], mode: str = "w") -> int:
    """A file descriptor of ``path`` opened for ``mode`` (``w``, ``a``, ``x``, ``r+``), only if
    ``path`` is a regular file of its own (or new): never a symbolic link, a hard link to
    another name, a FIFO, a device or a folder. ``w`` truncates it after the checks."""
    path = Path(path)
    try:
        fd = os.open(path, _MODES[mode] | _NOFOLLOW | _NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or _is_link(path):
            raise _refused(path, "is a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise _refused(path, "is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(path, "is not a regular file")
        if info.st_nlink > 1:
            raise _refused(path, f"is a hard link ({info.st_nlink} names share its contents)")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        if mode == "w":
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_run_file(
    path: str | os.PathLike[str], mode: str = "w", binary: bool = False, **kwargs: Any
) -> IO[Any]:
    """:func:`open_run_fd` as a file object (text in UTF-8 unless ``binary``); ``kwargs`` go to
    :func:`open` (e.g. ``buffering=1``)."""
    fd = open_run_fd(path, mode)
    try:
        if binary:
            return open(fd, "ab" if mode == "a" else "wb", **kwargs)
        return open(fd, "a" if mode == "a" else "w", encoding="utf-8", **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_run_text(path: str | os.PathLike[str], text: str, mode: str = "w") -> None:
    """Write (``w``), append (``a``) or create (``x``) ``path`` with ``text``, safely."""
    with open_run_file(path, mode) as handle:
        handle.write(text)


def write_run_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``path`` with ``data``, safely."""
    with open_run_file(path, "w", binary=True) as handle:
        handle.write(data)


def _is_link(path: Path) -> bool:
    try:
        return path.is_symlink()
    except OSError:
        return False


def _refused(path: Path, what: str) -> RunFileError:
    return RunFileError(
        f"{path} {what}; fewmask writes only files of its own in a run folder, never through a "
        "link or into anything else; it was left untouched. Remove it (or choose another run "
        "folder) and try again"
    )
