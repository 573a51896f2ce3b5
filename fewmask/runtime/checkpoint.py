"""Checkpoints written atomically and verified when read.

A checkpoint is a ``torch.save`` archive of the state plus ``format``, ``version`` and
``sha256``, a digest of every value and tensor byte of the state (:func:`state_digest`). Reading
one (``torch.load(weights_only=True)``, which never runs code from the file) recomputes the
digest, so a flipped bit anywhere in a tensor is a :class:`CheckpointError`, never a silently
different run. Every error names the file and what is wrong with it.

Writing goes to a temporary file beside the target, fsynced and renamed over it; with
``previous=`` the file it replaces is first kept under that name (``checkpoint.prev.pt``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fewmask.errors import CheckpointError, CheckpointWriteError, FewmaskWarning

FORMAT = "fewmask.checkpoint"
VERSION = 2  # 2: the state's SHA-256 digest is stored with it (1: none)
_HEADER = ("format", "version", "sha256")
_ZIP_MAGIC = b"PK\x03\x04"
_PARTIAL = ".tmp"  # suffix of a write under way


def _partial_prefix(path: Path) -> str:
    return f".{path.name}."


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint state: every key, value, dtype, shape and tensor byte, in order."""
    digest = hashlib.sha256()
    todo: list[Any] = [state]
    while todo:
        value = todo.pop()
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to_dense() if value.layout != torch.strided else value.detach()
            tensor = tensor.cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, Mapping):
            digest.update(f"D{len(value)}".encode())
            for key, child in reversed(list(value.items())):
                todo += [child, _Key(key)]
        elif isinstance(value, (list, tuple)):
            digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}".encode())
            todo += reversed(value)
        else:
            digest.update(_scalar_bytes(value))
    return digest.hexdigest()


class _Key:
    """A mapping key on the digest's work list (told apart from a value)."""

    def __init__(self, key: Any):
        self.key = key


def _scalar_bytes(value: Any) -> bytes:
    if isinstance(value, _Key):
        return b"K" + _scalar_bytes(value.key)
    if isinstance(value, float):
        text = value.hex()
    elif isinstance(value, bytes):
        return b"B%d:" % len(value) + value
    else:
        text = repr(value)
    data = text.encode("utf-8", "surrogatepass")
    return f"{type(value).__name__}{len(data)}:".encode() + data


def save_checkpoint(
    state: dict[str, Any], path: str | Path, previous: str | Path | None = None
) -> None:
    """Write ``state`` with its digest to ``path`` so that a crash at any moment leaves the old
    file intact.

    The write goes to a temporary file ``.NAME.*.tmp`` beside ``path``, renamed over it when
    complete; a crash leaves that file behind (see :func:`discard_partial_writes`). With
    ``previous``, the file being replaced is first kept under that name (the run folder's
    ``checkpoint.prev.pt``); ``path`` exists at every moment. A failure to write raises
    :class:`CheckpointWriteError` (an ``OSError``) and leaves the old files as they were."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "sha256": state_digest(state), **state}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path), suffix=_PARTIAL, dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            target = _Recorded(f)
            try:
                torch.save(payload, target)
            except RuntimeError:  # torch's writer hides the OSError behind its own message
                if target.error is not None:
                    raise target.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            _keep_as(path, Path(previous))
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointWriteError):
            raise _write_error(path, exc) from exc
        raise


def _keep_as(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` in one rename (a hard link where the file system
    has them), so both names always hold a complete file."""
    if _same_file(path, previous):  # a write cut short after keeping it: kept already
        return
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(previous), suffix=_PARTIAL, dir=path.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here: copy
            import shutil

            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    finally:  # rename(2) between two links of one file does nothing and keeps both names
        Path(tmp).unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Recorded:
    """A file whose write errors are kept: ``torch.save`` turns them into a RuntimeError
    without the cause (a full disk, a file-size limit)."""

    def __init__(self, file: Any):
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


_WRITE_FIXES = {
    errno.ENOSPC: "The disk is full: free space",
    errno.EDQUOT: "Your disk quota is used up: free space in it",
    errno.EFBIG: "The file would exceed the largest file allowed (the process's file-size "
    "limit, ulimit -f, or the file system's): raise the limit",
    errno.EACCES: "Give write permission",
    errno.EROFS: "The file system is read-only: make it writable",
}


def _write_error(path: Path, exc: OSError) -> CheckpointWriteError:
    reason = exc.strerror or str(exc)
    fix = _WRITE_FIXES.get(exc.errno or 0, f"Make room or give write permission in {path.parent}")
    kept = (
        f"the previous checkpoint {path} is kept"
        if path.is_file()
        else "no checkpoint of this run was written before, so none is kept"
    )
    then = "resume the run" if path.is_file() else "start the run again"
    error = CheckpointWriteError(
        f"cannot write checkpoint {path}: {reason}; {kept}. {fix}; then {then}"
    )
    error.errno = exc.errno
    return error


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint. A missing, empty, truncated, corrupt, tampered, foreign
    or unsafe file raises :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with path.open("rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (a write cut short?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(_load_problem(path, head, exc)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fewmask checkpoint (no fewmask format mark)")
    version = state.get("version")
    if version == 1:
        warnings.warn(
            f"{path} was written by an older fewmask without a digest; it cannot be verified",
            FewmaskWarning,
            stacklevel=2,
        )
        return state
    if version != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version}, expected {VERSION}")
    stored = state.get("sha256")
    body = {k: v for k, v in state.items() if k not in _HEADER}
    if not isinstance(stored, str) or stored != state_digest(body):
        raise CheckpointError(
            f"checkpoint {path} fails its integrity check: the SHA-256 digest of its contents "
            "differs from the one written with it (the file was modified or damaged after it "
            "was written)"
        )
    return body | {"format": FORMAT, "version": VERSION}


def _load_problem(path: Path, head: bytes, exc: Exception) -> str:
    message = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", message)
    if blocked:
        return (
            f"checkpoint {path} was refused: it is a pickle that would import and run "
            f"{blocked.group(1)} (an unsafe or malicious file, not a fewmask checkpoint); it was "
            "not executed"
        )
    if head != _ZIP_MAGIC:
        return f"{path} is not a fewmask checkpoint (not a torch archive)"
    first = next((line for line in message.splitlines() if line.strip()), type(exc).__name__)
    return f"checkpoint {path} is truncated or corrupt ({first.split('. ')[0][:200]})"


def discard_partial_writes(path: str | Path) -> None:
    """Remove what writes of ``path`` cut short by a crash left behind."""
    path = Path(path)
    for partial in path.parent.glob(f"{_partial_prefix(path)}*{_PARTIAL}"):
        partial.unlink(missing_ok=True)  # under torchrun every rank may clean up at once
