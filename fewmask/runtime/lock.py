"""One process writes a run folder at a time: a lock file naming its owner.

``RUN/run.lock`` holds the owner's pid, host, process start time and command line, and the owner
holds an exclusive ``flock`` on it for as long as it runs; the kernel drops that lock when the
process dies, however it dies. A second process finds the flock taken and is refused with
:class:`RunLockedError` naming the owner. A lock file whose flock is free was left by a process
that died without releasing it (``kill -9``, a crash): on this host its pid is checked, the
takeover is explained in a :class:`FewmaskWarning`, and the lock passes to the new process.
A lock left by another host cannot be checked and is refused with the command to remove it.
Where ``flock`` is missing (another OS, some network file systems) the pid check decides alone.

The lock is re-entrant within a process (the CLI takes it before it touches the folder, the
Trainer again while it trains) and its file is removed when the last holder releases it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fewmask.errors import FewmaskWarning, RunFileError, RunFolderError, RunLockedError
from fewmask.runtime.files import open_run_fd

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "run.lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_HELD: dict[str, list[int]] = {}  # lock path -> [fd, holders] in this process


@contextmanager
def locked(folder: str | os.PathLike[str], name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) inside the ``with`` block."""
    path = acquire(folder, name)
    try:
        yield path
    finally:
        release(path)


def acquire(folder: str | os.PathLike[str], name: str = LOCK_NAME) -> Path:
    """Take the lock of ``folder`` for this process; returns the lock file's path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder.resolve() / name
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {folder}: {_reason(exc)}") from None
    held = _HELD.get(str(path))
    if held is not None:
        held[1] += 1
        return path
    try:
        fd = _open_locked(path)
    except RunFileError:
        raise
    except OSError as exc:
        raise RunFolderError(f"cannot lock {path}: {_reason(exc)}") from None
    try:
        _take_over_stale(path, fd)
        _write_owner(fd)
    except BaseException:
        os.close(fd)
        raise
    _HELD[str(path)] = [fd, 1]
    return path


def release(path: Path) -> None:
    """Give the lock back; the last holder in this process removes the file."""
    held = _HELD.get(str(path))
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[str(path)]
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a folder made read-only meanwhile: the next owner finds the lock stale
    os.close(held[0])


def release_all() -> None:
    """Release every lock this process holds (the command's last step: nothing stays locked)."""
    for key in list(_HELD):
        _HELD[key][1] = 1
        release(Path(key))


def owner_of(path: Path) -> dict[str, Any] | None:
    """What a lock file says about its owner (None: empty, unreadable or not a lock file of
    its own, e.g. a symbolic link)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        try:
            text = os.read(fd, 1 << 16).decode("utf-8") if _is_plain(fd) else ""
        finally:
            os.close(fd)
        data = json.loads(text or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(owner: dict[str, Any] | None) -> str:
    """``pid 123 on host x, started 2026-01-01 10:00:00 (fewmask train ...)``."""
    if not owner:
        return "an unknown process"
    started = owner.get("started")
    when = time.strftime(", started %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    command = f" ({owner['command']})" if owner.get("command") else ""
    return f"pid {owner.get('pid')} on host {owner.get('host')}{when}{command}"


# ----------------------------------------------------------------------------- internals


def _open_locked(path: Path) -> int:
    """Open ``path`` and hold its flock; refuse if another live process holds it."""
    while True:
        fd = open_run_fd(path, "r+")  # never through a link planted as run.lock
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _locked_error(path, owner_of(path)) from None
        except OSError:  # no flock on this file system: the pid check decides
            return fd
        try:  # the owner before us may have removed the file between our open and flock
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _take_over_stale(path: Path, fd: int) -> None:
    """The lock file has contents only if its owner died holding it: check and explain."""
    owner = owner_of(path)
    if not owner or owner.get("pid") == os.getpid():
        return
    if owner.get("host") != socket.gethostname():
        raise RunLockedError(
            f"{path.parent} is locked by {describe(owner)}, which this machine cannot check; "
            f"if that run is over, remove {path} and start again"
        )
    if _alive(owner):
        raise _locked_error(path, owner)
    warnings.warn(
        f"{path}: taking over the lock left by {describe(owner)}, which is no longer running "
        "(it ended without releasing it, e.g. killed)",
        FewmaskWarning,
        stacklevel=4,
    )


def _locked_error(path: Path, owner: dict[str, Any] | None) -> RunLockedError:
    return RunLockedError(
        f"{path.parent} is in use by {describe(owner)}; wait for it to finish or stop it "
        "(a new run can be written to another folder)"
    )


def _write_owner(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": _process_start(os.getpid()),
        "started": time.time(),
        "command": " ".join(["fewmask", *sys.argv[1:]])[:500],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process a lock file names still runs (same pid and same start time)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    start = _process_start(pid)
    return start is None or owner.get("process_start") in (None, start)


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _is_plain(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
