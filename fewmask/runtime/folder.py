"""The run folder: every file one run writes, by name, and the operations on them.

::

    RUN/
      checkpoint.pt     the state to resume from, config included, with its SHA-256 digest
                        (written atomically; a write cut short by a crash leaves a
                        .checkpoint.pt.*.tmp file beside it)
      checkpoint.prev.pt  the checkpoint before it, kept when a new one is written; resuming
                        falls back to it when checkpoint.pt fails verification
      run.lock          while a process writes the run: its pid and host (fewmask.runtime.lock)
      stopped.json      why the last training stopped early (a non-finite value), if it did
      config.yaml       the resolved config, a human-readable copy of the checkpoint's
      results.json      the meta-test results of the training
      test-*.json       the results of each later `fewmask test` (never over results.json)
      resumes.jsonl     each resume: its iteration and the overrides it accepted
      metrics.jsonl     every logged scalar, one JSON object per line
      events.out.tfevents.*   TensorBoard events, in the folder itself, so that
                        `tensorboard --logdir PARENT` names the run by the folder's name
                        (runs written before kept them in tensorboard/, which is still used)

The Trainer writes the checkpoint, results and logs; the CLI and the experiments write the
config copy and ask whether a folder holds a run. Resuming reads the config from the checkpoint
(:meth:`RunFolder.load_checkpoint`, :meth:`RunFolder.stored_config`), never from ``config.yaml``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewmask.config import config_yaml, read_config_file
from fewmask.errors import CheckpointError, ConfigError, FewmaskWarning
from fewmask.runtime.checkpoint import discard_partial_writes, load_checkpoint, save_checkpoint
from fewmask.runtime.files import open_run_file, write_run_text
from fewmask.runtime.lock import LOCK_NAME, acquire, locked, release

OWN_FILES = (
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "config.yaml",
    "results.json",
    "metrics.jsonl",
    "resumes.jsonl",
    "stopped.json",
    "run.lock",
    "test-*.json",
    "events.out.tfevents.*",
    "tensorboard/events.out.tfevents.*",
    ".checkpoint.pt.*.tmp",
    ".checkpoint.prev.pt.*.tmp",
)
"""Every file fewmask writes in a run folder, as glob patterns relative to it (the module
docstring says what each holds)."""


def _in_run(name: str) -> property:
    """A read-only :class:`RunFolder` attribute: the path of the file ``name`` in the run."""

    def path(run: RunFolder) -> Path:
        return run.path / name

    return property(path, doc=f"``RUN/{name}``")


CONFIG_HEADER = "# fewmask: the resolved config of this run (its checkpoint holds the same)\n"
"""The first line of every ``config.yaml`` fewmask writes: a file without it is not fewmask's."""


class RunFolder:
    """The files of the run in ``path`` (nothing is created until something is written)."""

    CHECKPOINT = "checkpoint.pt"
    CONFIG = "config.yaml"
    RESULTS = "results.json"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"  # where earlier runs wrote their events (still read)
    RESUMES = "resumes.jsonl"
    PREVIOUS = "checkpoint.prev.pt"
    STOPPED = "stopped.json"
    LOCK = LOCK_NAME

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.loaded_from: Path | None = None  # the checkpoint load_checkpoint() used
        self._rotate = True  # False once checkpoint.pt failed verification: never keep it

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    checkpoint = _in_run(CHECKPOINT)
    config = _in_run(CONFIG)
    results = _in_run(RESULTS)
    metrics = _in_run(METRICS)
    resumes = _in_run(RESUMES)
    previous_checkpoint = _in_run(PREVIOUS)
    stopped = _in_run(STOPPED)
    lock_file = _in_run(LOCK)

    @property
    def tensorboard(self) -> Path:
        """The folder of the TensorBoard events: the run folder, so TensorBoard names the run
        after it (a run that already has events in ``tensorboard/`` keeps them there)."""
        legacy = self.path / self.TENSORBOARD
        return legacy if any(legacy.glob("events.out.tfevents.*")) else self.path

    def lock(self) -> Path:
        """Take the folder's lock until :meth:`unlock` (or the process ends); re-entrant."""
        return acquire(self.path, self.LOCK)

    def unlock(self) -> None:
        release(self.path.resolve() / self.LOCK)

    def locked(self) -> Any:
        """``with run.locked():`` this process alone writes the folder
        (:mod:`fewmask.runtime.lock`); another process holding it is a RunLockedError naming it."""
        return locked(self.path, self.LOCK)

    def create(self) -> None:
        """Make the folder (and its parents) if it does not exist."""
        self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ state
    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def has_results(self) -> bool:
        """Whether the run was meta-tested (``results.json`` exists)."""
        return self.results.is_file()

    def holds_run(self) -> bool:
        """Whether a run was written here (a checkpoint or results): writing another over it
        would mix the two."""
        return self.has_checkpoint() or self.has_results()

    def discard_run(self) -> None:
        """Remove the checkpoint and results of a run written here (to start another)."""
        self.checkpoint.unlink(missing_ok=True)
        self.discard_partial_checkpoints()
        self.results.unlink(missing_ok=True)
        for path in [*self.test_results(), self.resumes, self.previous_checkpoint, self.stopped]:
            path.unlink(missing_ok=True)

    def discard_all(self) -> list[Path]:
        """Remove every file of the run that fewmask names (checkpoints and their partial
        writes, config copy, results, logs, TensorBoard events, lock, stop record), then the
        folder if nothing else is left in it. Any other file stays. Returns what was removed."""
        if not self.path.is_dir():
            return []
        legacy = self.path / self.TENSORBOARD
        files = [path for pattern in OWN_FILES for path in sorted(self.path.glob(pattern))]
        removed = []
        for path in files:
            if path.is_file() and not path.is_symlink():  # a link planted here is not ours
                path.unlink()
                removed.append(path)
        for folder in (legacy, self.path):
            try:
                folder.rmdir()
            except OSError:  # not empty: files fewmask did not write stay
                pass
        return removed

    def owns(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is one of the files fewmask names in this run folder
        (:data:`OWN_FILES`); nothing else in it is ever written or removed."""
        try:
            relative = Path(path).relative_to(self.path).as_posix()
        except ValueError:
            return False
        return any(fnmatch.fnmatchcase(relative, pattern) for pattern in OWN_FILES)

    # ------------------------------------------------------------------ checkpoint
    def load_checkpoint(self, what: str = "RUN_DIR") -> dict[str, Any]:
        """The run's checkpoint, on the CPU. A missing one is a ConfigError (``what`` names the
        argument that gave this folder); a corrupt one a CheckpointError."""
        try:
            exists = self.path.exists()
        except (OSError, ValueError) as exc:  # a NUL, an unencodable or too long name
            raise ConfigError([f"{what}: {str(self.path)!r} is not a usable path: {exc}"]) from None
        if not exists:
            raise ConfigError([f"{what}: {self.path} does not exist"])
        if not self.path.is_dir():
            raise ConfigError([f"{what}: {self.path} is not a folder (give the run's folder)"])
        if not self.has_checkpoint() and not self.previous_checkpoint.is_file():
            raise ConfigError([f"{what}: no checkpoint at {self.checkpoint}; {self._why_none()}"])
        return self.verified_checkpoint()

    def verified_checkpoint(self) -> dict[str, Any]:
        """``checkpoint.pt``, verified; if it is missing or fails verification, the previous
        one (``checkpoint.prev.pt``) with a FewmaskWarning naming both. ``loaded_from`` says
        which was used; both failing is a CheckpointError naming both problems."""
        try:
            state = load_checkpoint(self.checkpoint, map_location="cpu")
            self.loaded_from = self.checkpoint
            return state
        except CheckpointError as latest:
            if not self.previous_checkpoint.is_file():
                raise
            try:
                state = load_checkpoint(self.previous_checkpoint, map_location="cpu")
            except CheckpointError as previous:
                raise CheckpointError(f"{latest}; and the previous one: {previous}") from None
            warnings.warn(
                f"{latest}; using the previous checkpoint {self.previous_checkpoint} "
                f"(iteration {state.get('iteration')}) instead",
                FewmaskWarning,
                stacklevel=2,
            )
            self.loaded_from = self.previous_checkpoint
            self._rotate = False  # the next checkpoint replaces the bad one, not the good one
            return state

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``checkpoint.pt`` atomically, keeping the one it replaces as
        ``checkpoint.prev.pt``."""
        previous = self.previous_checkpoint if self._rotate else None
        save_checkpoint(state, self.checkpoint, previous=previous)
        self._rotate = True
        return self.checkpoint

    def stored_config(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The config a checkpoint of this run was written with (plain data)."""
        config = state.get("config")
        if not isinstance(config, Mapping):
            raise CheckpointError(
                f"{self.checkpoint} holds no config (its Trainer was built from Python objects); "
                "resume it from Python with Trainer.resume()"
            )
        return dict(config)

    def discard_partial_checkpoints(self) -> None:
        """Remove the temporary files of checkpoint writes cut short by a crash (on resume)."""
        discard_partial_writes(self.checkpoint)
        discard_partial_writes(self.previous_checkpoint)

    # ------------------------------------------------------------------ early stops
    def write_stopped(self, iteration: int, reason: str) -> None:
        """Record that training stopped early at ``iteration`` (``stopped.json``)."""
        self.create()
        info = {"iteration": iteration, "reason": reason, "time": time.time()}
        write_run_text(self.stopped, json.dumps(info, indent=2) + "\n")

    def read_stopped(self) -> dict[str, Any] | None:
        """Why the last training stopped early, or None if it did not."""
        try:
            info = json.loads(self.stopped.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"iteration": None, "reason": f"{self.stopped} is unreadable"}
        return info if isinstance(info, dict) else {"iteration": None, "reason": str(info)}

    def clear_stopped(self) -> None:
        self.stopped.unlink(missing_ok=True)

    def _why_none(self) -> str:
        """Why the folder has no checkpoint, from the files it does hold."""
        stopped = self.read_stopped()
        if stopped is not None:
            return (
                f"training stopped at iteration {stopped.get('iteration')}, before its first "
                f"checkpoint: {stopped.get('reason')}"
            )
        again = (
            f"`fewmask train {self.config} --run-dir NEW_DIR`"
            if self.config.is_file()
            else "its config into a new folder"
        )
        here = f"`fewmask train {self.config} --run-dir {self.path}`"  # it holds no run
        if self.has_results():
            try:
                iteration = f" at iteration {self.read_results().get('iteration')}"
            except (OSError, ValueError, AttributeError):
                iteration = ""
            return (
                f"the run finished{iteration} ({self.results} holds its meta-test) and its "
                "checkpoints were removed since, so it can be neither resumed nor tested again; "
                f"to train it again, run {again}"
            )
        if self.config.is_file():
            return (
                "no checkpoint of this run is left: it stopped before its first checkpoint, or "
                f"its checkpoints were removed; start it again with {here}"
            )
        return f"{self.path} holds none of the files of a fewmask run; is it a run folder?"

    # ------------------------------------------------------------------ config copy, results
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the human-readable copy of the run's config (plain data) as ``config.yaml``,
        marked as fewmask's by its first line."""
        self.create()
        write_run_text(self.config, CONFIG_HEADER + config_yaml(config))

    def foreign_config(self) -> Path | None:
        """``config.yaml`` if it is there and not fewmask's (no header line, and no run beside
        it): a user's own file, which starting a run here would overwrite. A link in its place
        is not read (writing refuses it: :mod:`fewmask.runtime.files`)."""
        if self.config.is_symlink():
            return None
        try:
            with self.config.open("rb") as handle:
                first = handle.read(len(CONFIG_HEADER.encode()))
        except OSError:
            return None
        ours = first == CONFIG_HEADER.encode() or self.holds_run() or self.metrics.is_file()
        return None if ours else self.config

    def read_config(self) -> dict[str, Any]:
        """The human-readable copy ``config.yaml`` (resuming reads the checkpoint's instead)."""
        return read_config_file(self.config)

    def write_results(self, results: Mapping[str, Any]) -> None:
        self.create()
        write_run_text(self.results, json.dumps(results, indent=2) + "\n")

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.results.read_text())

    def write_test_results(self, results: Mapping[str, Any]) -> Path:
        """Write the results of a later meta-test as ``test-<UTC time>.json`` beside the
        training's ``results.json`` (which experiments reuse); returns the file."""
        self.create()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        text = json.dumps(results, indent=2, default=str) + "\n"
        path, n = self.path / f"test-{stamp}.json", 2
        while True:
            try:
                write_run_text(path, text, mode="x")  # a new file: nothing of anyone's replaced
                return path
            except FileExistsError:
                path, n = self.path / f"test-{stamp}-{n}.json", n + 1

    def test_results(self) -> list[Path]:
        """The files of later meta-tests, oldest first."""
        return sorted(self.path.glob("test-*.json"), key=lambda p: p.stat().st_mtime_ns)

    def record_resume(
        self,
        iteration: int,
        changes: Mapping[str, Any],
        schedule: Mapping[str, Any] | None = None,
    ) -> Path:
        """Append a resume to ``resumes.jsonl``: its iteration, the config values it changed and,
        if the learning-rate schedule was re-planned, its old and new end and the lr it
        continues at."""
        self.create()
        line = {"iteration": iteration, "time": time.time(), "changes": dict(changes)}
        if schedule:
            line["schedule"] = dict(schedule)
        with open_run_file(self.resumes, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        return self.resumes
