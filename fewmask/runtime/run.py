"""One run in one folder, owned by this process: the one object that sets up the process (device,
ranks, threads, allocator), holds the folder's lock, applies the start policy (new, ``--force``,
``--resume``, ``auto``) and words and writes the run's records (the config copy, the stopped
record, the resumes). The Trainer keeps the loop and evaluation and asks its Run for the rest.

A Run without a folder writes nothing (a Trainer composed in Python without ``run_dir``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from fewmask.errors import ConfigError
from fewmask.runtime.allocator import apply_train_option
from fewmask.runtime.folder import RunFolder
from fewmask.runtime.process import Process
from fewmask.runtime.threads import ThreadChoice, apply_threads

START_MODES = ("new", "force", "resume", "auto")
"""How a run starts in its folder: ``new`` refuses a folder that holds a run, ``force`` removes
that run's files (only those fewmask names) first, ``resume`` continues from the checkpoint,
``auto`` reuses a finished run, resumes a started one and starts one otherwise."""


class Run:
    """The run in ``path`` (``None``: write nothing), computed by ``process``."""

    def __init__(
        self, path: str | os.PathLike[str] | RunFolder | None, process: Process | None = None
    ):
        if path is None or isinstance(path, RunFolder):
            self.folder = path
        else:
            self.folder = RunFolder(path)
        self.process = process or Process.start("cpu")
        self.threads: ThreadChoice | None = None
        self._lock: contextlib.ExitStack | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.folder.path) if self.folder else None!r})"

    @classmethod
    def prepare(
        cls, path: str | os.PathLike[str] | RunFolder | None, device: str, tune_malloc: bool
    ) -> Run:
        """The run, its process set up for ``device`` and the allocator tuned as configured
        (process-wide, before any data is read)."""
        apply_train_option(tune_malloc)
        return cls(path, Process.start(device))

    def read_checkpoint(self, what: str = "RUN_DIR") -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's checkpoint (verified, on the CPU) and the config it holds, as plain data.
        ``what`` names the argument that gave the folder, in the error when it holds none."""
        if self.folder is None:
            raise ConfigError([f"{what}: this run has no folder"])
        state = self.folder.load_checkpoint(what)
        return state, self.folder.stored_config(state)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (it has a folder and is rank 0)."""
        return self.folder is not None and self.process.is_main

    # ------------------------------------------------------------------ process
    def apply_threads(
        self, setting: int | str, backbone: nn.Module, shape: Any, sampler: Any
    ) -> ThreadChoice:
        """Set the process's CPU threads for this model (``train.threads``); recorded here."""
        self.threads = apply_threads(setting, backbone, shape, sampler, self.process.device)
        return self.threads

    # ------------------------------------------------------------------ the lock
    def hold(self) -> None:
        """Take the folder's lock for the rest of this run (once; rank 0 only): another process
        writing the folder is a RunLockedError naming it."""
        if self._lock is None and self.writes:
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(self.folder.locked())

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextlib.contextmanager
    def held(self) -> Iterator[Run]:
        """``with run.held():`` the lock for the block (kept if it was held before)."""
        before = self._lock is not None
        self.hold()
        try:
            yield self
        finally:
            if not before:
                self.release()

    # ------------------------------------------------------------------ the start policy
    def decide(self, start: str) -> str:
        """What starting with ``start`` means for this folder: ``"new"``, ``"resume"`` or
        ``"finished"`` (``auto`` on a run that has its results). Takes the lock first; refuses
        what the folder's state does not allow, naming the option that would."""
        if start not in START_MODES:
            raise ConfigError([f"start: {start!r} is not one of {', '.join(START_MODES)}"])
        if self.folder is None:
            if start == "resume":
                raise ConfigError(["run_dir: resuming needs the run's folder"])
            return "new"
        self.hold()  # before anything in the folder is read or cleaned up
        folder = self.folder
        if start == "resume":
            return "resume"
        if start == "auto":
            if folder.has_results():
                return "finished"
            if folder.has_checkpoint() or folder.previous_checkpoint.is_file():
                return "resume"
        if folder.holds_run() and start != "force":
            raise ConfigError(
                [
                    f"$.run_dir: {folder.path} already holds a run; continue it with "
                    f"`fewmask train --resume {folder.path}`, pick another with --run-dir, "
                    "or pass --force"
                ]
            )
        foreign = folder.foreign_config()
        if foreign is not None:
            raise ConfigError(
                [
                    f"$.run_dir: {foreign} is not a config fewmask wrote, and a run would write "
                    "its own copy there; pick another --run-dir or move the file"
                ]
            )
        if start == "force" and self.writes:
            folder.discard_run()  # the old run's files (only those fewmask names)
        return "new"

    # ------------------------------------------------------------------ records
    def write_config(self, config: Mapping[str, Any] | None) -> None:
        """The human-readable copy of the run's config (``config.yaml``; rank 0)."""
        if self.writes and config is not None:
            self.folder.write_config(config)

    def record_resume(
        self, iteration: int, changes: Mapping[str, Any], schedule: Mapping[str, Any] | None
    ) -> Path | None:
        """A resume and what it changed (``resumes.jsonl``; rank 0)."""
        if not self.writes or not (changes or schedule):
            return None
        return self.folder.record_resume(iteration, changes, schedule)

    def checkpoint_note(self) -> str:
        """What a run that stops now keeps, from the folder's facts."""
        if self.folder is None:
            return "this Trainer has no run folder, so nothing was saved"
        folder = self.folder
        if folder.has_checkpoint() or folder.previous_checkpoint.is_file():
            return f"the last good checkpoint is kept in {folder.path}"
        return f"no checkpoint was written yet in {folder.path}"

    def stop_advice(self, lr_option: str = "objective.options.lr") -> str:
        """How to go on after a non-finite value, given what the folder holds."""
        if self.folder is None:
            return "lower the outer learning rate and train again"
        folder = self.folder
        if folder.has_checkpoint() or folder.previous_checkpoint.is_file():
            return (
                f"resume with a lower learning rate: `fewmask train --resume {folder.path} "
                f"-o {lr_option}=...`"
            )
        return (
            f"start again with a lower learning rate: `fewmask train CONFIG --run-dir "
            f"{folder.path} --force -o {lr_option}=...`"
        )

    def record_stop(self, iteration: int, reason: str) -> None:
        """Record why training stopped early (``stopped.json``; rank 0)."""
        if self.writes:
            self.folder.write_stopped(iteration, reason)

    def clear_stop(self) -> None:
        if self.writes:
            self.folder.clear_stopped()
