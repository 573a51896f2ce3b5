"""Where training metrics go: TensorBoard event files, a JSON-lines file, or nowhere."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from fewmask.options import converter
from fewmask.runtime.files import open_run_file, write_run_bytes
from fewmask.runtime.folder import RunFolder


class MetricLogger(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def wall_clock(self, tag: str, seconds: float, step: int) -> None: ...
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None: ...
    def text(self, tag: str, text: str, step: int) -> None: ...
    def image(self, tag: str, image: torch.Tensor, step: int) -> None: ...
    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """Discards everything."""

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def wall_clock(self, tag: str, seconds: float, step: int) -> None:
        pass

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        pass

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pass

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _step(raw: bytes) -> int | None:
    """The step of one ``metrics.jsonl`` line; ``None`` for a line cut short by a crash
    (anywhere, even inside a UTF-8 character) or otherwise unreadable."""
    try:
        return int(json.loads(raw.decode("utf-8"))["step"])
    except (ValueError, KeyError, TypeError, OverflowError):  # UnicodeDecodeError included
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
        self.jsonl = self.run.metrics
        open_run_file(self.jsonl, "a").close()  # a file of its own (not a link or a FIFO)
        _wait_for_a_later_second(self.run.tensorboard)
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=resume_step)
        if resume_step is not None:
            kept = [
                line
                for line in self.jsonl.read_bytes().splitlines()
                if (step := _step(line)) is not None and step < resume_step
            ]
            write_run_bytes(self.jsonl, b"".join(line + b"\n" for line in kept))
        self._file = open_run_file(self.jsonl, "a", buffering=1)  # by line: `tail -f` works

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self._file.write(json.dumps({"step": step, "tag": tag, "value": value}) + "\n")

    def wall_clock(self, tag: str, seconds: float, step: int) -> None:
        """A timing, as the TensorBoard scalar ``time/TAG`` only: it differs from run to run,
        so it stays out of ``metrics.jsonl``, whose values a resumed run reproduces exactly."""
        self.writer.add_scalar(f"time/{tag}", seconds, step)

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        try:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)
        except ValueError:  # values beyond TensorBoard's buckets (|x| > 1e20): a diverged run
            pass  # its scalars and the divergence warning say what happened

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (TensorBoard's Text tab)."""
        self.writer.add_text(tag, text, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """An image ``[C, H, W]`` with values in [0, 1] (TensorBoard's Images tab)."""
        self.writer.add_image(tag, image.detach().float().cpu(), step)

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The run's hyperparameters with its final metrics (TensorBoard's HParams tab), in
        this run's own event file. The metrics must also be logged as scalars of these tags."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        values = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()
        }
        for summary in hparams_summary(values, dict(metrics)):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        """Put everything logged so far on disk (called before every checkpoint)."""
        with self._events_named():
            self.writer.flush()
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        try:
            with self._events_named():
                self.writer.close()
        finally:
            self._file.close()

    @contextlib.contextmanager
    def _events_named(self) -> Iterator[None]:
        """TensorBoard's writer thread fails without naming its file (a full disk): name it."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            where = self.run.tensorboard / "events.out.tfevents.*"
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(where)) from None


def _run_data(config: Mapping[str, Any] | None, train: Any) -> dict[str, Any]:
    """The run's config as plain data (a Trainer composed in Python may have only its
    TrainConfig, which is added when the config has no ``train``)."""
    data = {"train": converter.unstructure(train), **dict(config or {})}
    return json.loads(json.dumps(data))


def run_config_text(config: Mapping[str, Any] | None, train: Any, threads: object) -> str:
    """The config as TensorBoard text (markdown: a code block), with the thread count used."""
    body = yaml.safe_dump(_run_data(config, train), sort_keys=False)
    code = "\n".join(f"    {line}" for line in body.splitlines())
    return f"threads: {threads}\n\n{code}"


def run_hparams(config: Mapping[str, Any] | None, train: Any, threads: Any) -> dict[str, Any]:
    """Every config value by its dotted path (``sampler.options.shots``), plus ``threads``."""
    flat: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (bool, int, float, str)):
            flat[path] = value
        else:  # lists, None, {}
            flat[path] = json.dumps(value)

    walk(_run_data(config, train), "")
    flat["threads"] = threads.threads
    return flat


def tensorboard_command(logdir: str | Path) -> str:
    """``tensorboard --logdir LOGDIR`` as it runs when typed here: the ``tensorboard`` beside
    this Python (e.g. ``.venv/bin/tensorboard``, relative to the working folder when inside
    it) unless that is the one on PATH, else ``python -m tensorboard.main``."""
    beside = Path(sys.executable).with_name("tensorboard")
    on_path = shutil.which("tensorboard")
    if beside.is_file() and not (on_path and Path(on_path).resolve() == beside.resolve()):
        try:
            program = str(beside.relative_to(Path.cwd()))
        except ValueError:
            program = str(beside)
        program = shlex.quote(program)
    elif on_path:
        program = "tensorboard"
    else:
        program = f"{shlex.quote(sys.executable)} -m tensorboard.main"
    return f"{program} --logdir {shlex.quote(str(logdir))}"
