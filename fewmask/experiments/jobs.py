"""An experiment's runs as jobs a launcher can send anywhere, and the worker that runs one.

A :class:`Job` is plain data: the variant's label, its resolved config (plain data, its run
folder inside), whether it is meta-trained or only meta-tested, and the *name* of a probe with
its settings (:data:`PROBES`), which the worker rebuilds; never an in-memory closure. The
worker, :func:`run_job`, is one call, ``fewmask.train(config, run_dir, start="auto",
callbacks=...)``: a finished run is reused, a started one resumed from its checkpoint, so running
a job again (a resubmitted cluster job, the same command after a killed launcher) never redoes
work and never deletes what a run wrote.

Away from the terminal (every launcher but ``serial``) a job's output, and the traceback of its
failure, go to ``RUN/job.log``, appended to by every attempt.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from fewmask.errors import ConfigError
from fewmask.runtime.folder import RunFolder
from fewmask.runtime.progress import labelled

LOG = "job.log"
"""Each job's output in its run folder (every launcher but ``serial``)."""

Callback = Callable[[Any], None]


@attrs.frozen
class Probe:
    """A probe by name (a key of :data:`PROBES`) and its settings (plain data)."""

    name: str
    settings: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Job:
    """One run of an experiment, as plain data that pickles."""

    label: str
    config: dict[str, Any]  # the resolved config as plain data; ``run_dir`` is its folder
    train: bool = True  # False: meta-test the freshly built model without meta-training
    probe: Probe | None = None
    experiment: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])

    @property
    def log(self) -> Path:
        return self.run_dir / LOG


@attrs.frozen
class JobOutcome:
    """What a worker returns: ``finished`` or ``failed`` (with the error's first line)."""

    label: str
    status: str
    elapsed: float
    error: str = ""


class DiagnosticsProbe:
    """``mask-diagnostics``: :class:`~fewmask.experiments.diagnostics.MaskDiagnostics` every
    ``every`` iterations, built once the run's Trainer exists (its probe episodes come from it)."""

    def __init__(self, every: int, run_dir: str):
        self.every, self.run_dir = every, run_dir
        self.diagnostics: Any = None

    def start(self, trainer: Any) -> None:
        from fewmask.experiments.diagnostics import MaskDiagnostics, probe_batches

        self.diagnostics = MaskDiagnostics(probe_batches(trainer), self.every, self.run_dir)
        self.diagnostics.start(trainer)

    def __call__(self, trainer: Any) -> None:
        self.diagnostics(trainer)


def _task_gradient(**settings: Any) -> list[Callback]:
    from fewmask.experiments.gradient_probe import TaskGradientRecorder

    return [TaskGradientRecorder(**settings)]


PROBES: dict[str, Callable[..., Sequence[Callback]]] = {
    "mask-diagnostics": lambda every, run_dir: [DiagnosticsProbe(every, run_dir)],
    "task-gradient": _task_gradient,
}
"""Probe name -> ``factory(**settings)`` returning the run's fit callbacks. Optional methods of
a callback: ``before()`` (in the worker, before the run starts), ``start(trainer)`` (once the
Trainer is built and resumed, before training), ``after()`` (once the run has its results)."""


def rebuild(probe: Probe | None) -> list[Callback]:
    """The callbacks of ``probe`` (none without one)."""
    if probe is None:
        return []
    if probe.name not in PROBES:
        raise ConfigError([f"probe: unknown {probe.name!r}; known: {', '.join(PROBES)}"])
    return list(PROBES[probe.name](**probe.settings))


def run_job(job: Job, isolate: bool = True) -> JobOutcome:
    """Run ``job`` to its results (reusing or resuming what its folder holds).

    ``isolate``: the job's output goes to ``RUN/job.log`` and a failure is returned as a
    ``failed`` outcome (its traceback in the log); otherwise output stays on this terminal and
    a failure raises, as a run in this process always did."""
    start = time.monotonic()
    if not isolate:
        _execute(job, echo=None)
        return JobOutcome(job.label, "finished", time.monotonic() - start)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with _output_to(job.log) as log:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        print(f"=== {job.label}: started {stamp} (pid {os.getpid()})", file=log, flush=True)
        try:
            _execute(job, echo=lambda line: print(line, file=log, flush=True))
        except Exception as exc:
            traceback.print_exc(file=log)
            first = (str(exc).strip().splitlines() or [""])[0]
            error = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            print(f"=== {job.label}: failed: {error}", file=log, flush=True)
            return JobOutcome(job.label, "failed", time.monotonic() - start, error)
        print(f"=== {job.label}: finished", file=log, flush=True)
    return JobOutcome(job.label, "finished", time.monotonic() - start)


def _execute(job: Job, echo: Callable[[str], None] | None) -> None:
    """The run (``echo``: where its events go, resumed from where, threads; None: nowhere)."""
    from fewmask.session import train

    callbacks = rebuild(job.probe)
    for callback in callbacks:
        getattr(callback, "before", lambda: None)()
    with labelled(f"[{job.experiment}: {job.label}]" if job.experiment else f"[{job.label}]"):
        if job.train:
            train(job.config, job.run_dir, start="auto", callbacks=callbacks, echo=echo)
        else:
            _test_only(job, callbacks)
    for callback in callbacks:
        getattr(callback, "after", lambda: None)()


def _test_only(job: Job, callbacks: Sequence[Callback]) -> None:
    """Meta-test the model as built (a control that is never meta-trained); reused if done."""
    from fewmask.config.resolve import plain_config
    from fewmask.session import build_trainer, resolve

    run = RunFolder(job.run_dir)
    with run.locked():
        if run.has_results():
            return
        resolved = resolve(job.config)
        trainer = build_trainer(resolved)
        run.write_config(plain_config(resolved))
        if run.has_checkpoint():
            trainer.resume()
        for callback in callbacks:
            getattr(callback, "start", lambda trainer: None)(trainer)
        trainer.test()


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[io.TextIOBase]:
    """Send this process's output (Python's and the C library's, fds 1 and 2) to ``path``."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    old_streams = sys.stdout, sys.stderr
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        try:
            yield log
        finally:
            log.flush()
            sys.stdout, sys.stderr = old_streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def log_tail(path: Path, lines: int = 12) -> str:
    """The last ``lines`` lines of a job's log ("" if it has none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])
