"""Where training metrics go: TensorBoard event files, a JSON-lines file, or nowhere."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Protocol

import torch

from fewmask.run import RunFolder


class MetricLogger(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """Discards everything."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _step(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line; ``None`` for a line cut short by a crash."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _wait_for_a_later_second(folder: Path) -> None:
    """TensorBoard reads event files in name order, and names start with the creation second
    (then host and pid). A resumed run's file must sort after the files of the run it resumes,
    or its purge of their later steps is undone; so wait, at most a second, for a new second."""
    seconds = [
        int(p.name.split(".")[3])
        for p in folder.glob("events.out.tfevents.*")
        if p.name.split(".")[3].isdigit()
    ]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.02)


class RunLogger:
    """TensorBoard events plus ``metrics.jsonl`` in a run folder.

    ``resume_step`` drops what an earlier process logged at or after that step, from both
    (TensorBoard's ``purge_step``), so resumed curves have no duplicates; 0 starts afresh.
    """

    def __init__(self, run: RunFolder | str | Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        _wait_for_a_later_second(self.run.tensorboard)
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=resume_step)
        self.jsonl = self.run.metrics
        if resume_step is not None and self.jsonl.exists():
            kept = [
                line
                for line in self.jsonl.read_text().splitlines()
                if (step := _step(line)) is not None and step < resume_step
            ]
            self.jsonl.write_text("".join(line + "\n" for line in kept))
        self._file = self.jsonl.open("a", buffering=1)  # line by line, so `tail -f` works

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self._file.write(json.dumps({"step": step, "tag": tag, "value": value}) + "\n")

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def flush(self) -> None:
        """Put everything logged so far on disk (called before every checkpoint)."""
        self.writer.flush()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.writer.close()
        self._file.close()
