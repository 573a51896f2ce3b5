"""The run folder: every file one run writes, by name, and the operations on them.

::

    RUN/
      checkpoint.pt     the state to resume from, config included (written atomically; a write cut
                        short by a crash leaves a .checkpoint.pt.*.tmp file beside it)
      config.yaml       the resolved config, a human-readable copy of the checkpoint's
      results.json      the meta-test results
      metrics.jsonl     every logged scalar, one JSON object per line
      tensorboard/      TensorBoard event files

The Trainer writes the checkpoint, results and logs; the CLI and the experiments write the
config copy and ask whether a folder holds a run. Resuming reads the config from the checkpoint
(:meth:`RunFolder.load_checkpoint`, :meth:`RunFolder.stored_config`), never from ``config.yaml``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewmask.checkpoint import discard_partial_writes, load_checkpoint
from fewmask.config import dump_config, read_config_file
from fewmask.errors import CheckpointError, ConfigError


class RunFolder:
    """The files of the run in ``path`` (nothing is created until something is written)."""

    CHECKPOINT = "checkpoint.pt"
    CONFIG = "config.yaml"
    RESULTS = "results.json"
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

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

    # ------------------------------------------------------------------ checkpoint
    def load_checkpoint(self, what: str = "RUN_DIR") -> dict[str, Any]:
        """The run's checkpoint, on the CPU. A missing one is a ConfigError (``what`` names the
        argument that gave this folder); a corrupt one a CheckpointError."""
        if not self.has_checkpoint():
            raise ConfigError([f"{what}: no checkpoint at {self.checkpoint}; {self._why_none()}"])
        return load_checkpoint(self.checkpoint, map_location="cpu")

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

    def _why_none(self) -> str:
        if self.config.is_file():
            return (
                "the run stopped before its first checkpoint; start it again with "
                f"`fewmask train {self.config} --run-dir {self.path}`"
            )
        return f"is {self.path} a fewmask run?"

    # ------------------------------------------------------------------ config copy, results
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write the human-readable copy of the run's config (plain data) as ``config.yaml``."""
        self.create()
        dump_config(config, self.config)

    def read_config(self) -> dict[str, Any]:
        """The human-readable copy ``config.yaml`` (resuming reads the checkpoint's instead)."""
        return read_config_file(self.config)

    def write_results(self, results: Mapping[str, Any]) -> None:
        self.create()
        self.results.write_text(json.dumps(results, indent=2) + "\n")

    def read_results(self) -> dict[str, Any]:
        return json.loads(self.results.read_text())
