"""Checkpoints written atomically (temporary file, fsync, rename) and read with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fewmask.errors import CheckpointError

FORMAT = "fewmask.checkpoint"
VERSION = 1
_PARTIAL = ".tmp"  # suffix of a write under way


def _partial_prefix(path: Path) -> str:
    return f".{path.name}."


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves the old file intact.

    The write goes to a temporary file ``.NAME.*.tmp`` beside ``path``, renamed over it when
    complete; a crash leaves that file behind (see :func:`discard_partial_writes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path), suffix=_PARTIAL, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated, corrupt or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fewmask checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}, expected {VERSION}"
        )
    return state


def discard_partial_writes(path: str | Path) -> None:
    """Remove what writes of ``path`` cut short by a crash left behind."""
    path = Path(path)
    for partial in path.parent.glob(f"{_partial_prefix(path)}*{_PARTIAL}"):
        partial.unlink(missing_ok=True)  # under torchrun every rank may clean up at once
