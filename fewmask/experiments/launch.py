"""Hand an experiment's jobs to a launcher; say what happens to each; gather the failures.

One line per change of a job's state on stderr (queued, running, finished, failed, with the
elapsed time) and the overall count, e.g.::

    [width-sweep] maml-width2-5way1shot: finished in 41.2s  (3 finished, 1 failed, 2 running,
    2 queued of 8)

(one line each).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import attrs

from fewmask.errors import JobsFailedError
from fewmask.experiments.jobs import LOG, Job, JobOutcome, log_tail, run_job
from fewmask.interfaces import Launcher


@attrs.frozen
class Failure:
    """A job that ended without results: its label, run folder and why."""

    label: str
    run_dir: Path
    error: str

    def describe(self) -> str:
        tail = log_tail(self.run_dir / LOG)
        text = f"- {self.label} ({self.run_dir}): {self.error}"
        if tail:
            text += f"\n  last lines of {self.run_dir / LOG}:\n" + "\n".join(
                f"    {line}" for line in tail.splitlines()
            )
        return text


def failed_error(failures: Sequence[Failure], total: int) -> JobsFailedError:
    """One error naming every failed job with its log's tail."""
    head = (
        f"{len(failures)} of {total} runs failed; the others finished and the tables mark the "
        "failed ones missing. Fix the cause and run the same command again: finished runs are "
        "reused, started ones resumed:"
    )
    return JobsFailedError("\n".join([head, *(f.describe() for f in failures)]))


class Tracker:
    """Counts jobs by state and prints a line for each change (``show``: on stderr)."""

    def __init__(self, name: str, total: int, show: bool = True, stream: TextIO | None = None):
        self.name, self.total, self.show = name, total, show
        self.stream = stream or sys.stderr
        self.counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0}
        self.started: dict[str, float] = {}

    def line(self, label: str, text: str) -> None:
        if not self.show:
            return
        c = self.counts
        count = (
            f"({c['finished']} finished, {c['failed']} failed, {c['running']} running, "
            f"{c['queued']} queued of {self.total})"
        )
        print(f"[{self.name}] {label}: {text}  {count}", file=self.stream, flush=True)

    def reused(self, job: Job) -> None:
        self.counts["finished"] += 1
        self.line(job.label, "finished before, its results are reused")

    def queued(self, job: Job) -> None:
        self.counts["queued"] += 1
        self.line(job.label, "queued")

    def __call__(self, job: Job, state: str, outcome: Any = None) -> None:
        """The launcher's ``tell``: ``running``, or ``done`` with the job's outcome."""
        if state == "running":
            self._move(job, "queued", "running")
            self.started[job.label] = time.monotonic()
            self.line(job.label, "running")
            return
        before = "running" if job.label in self.started else "queued"
        elapsed = time.monotonic() - self.started.pop(job.label, time.monotonic())
        if isinstance(outcome, JobOutcome):
            elapsed = outcome.elapsed or elapsed
        status = outcome.status if isinstance(outcome, JobOutcome) else "failed"
        self._move(job, before, status)
        why = ""
        if status == "failed":
            why = f": {outcome.error if isinstance(outcome, JobOutcome) else _text(outcome)}"
        self.line(job.label, f"{status} in {elapsed:.1f}s{why}")

    def _move(self, job: Job, before: str, after: str) -> None:
        self.counts[before] = max(0, self.counts[before] - 1)
        self.counts[after] += 1


def launch_jobs(
    launcher: Launcher, jobs: Sequence[Job], tracker: Tracker, folder: Path
) -> list[Failure]:
    """Run ``jobs`` with ``launcher``; the jobs that ended without results."""
    for job in jobs:
        tracker.queued(job)
    work = partial(run_job, isolate=launcher.isolates_failures)
    outcomes = launcher.launch(jobs, work, tracker, folder)
    failures = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if (job.run_dir / "results.json").is_file():
            continue
        if isinstance(outcome, JobOutcome):
            error = outcome.error or f"it ended ({outcome.status}) without results.json"
        else:
            error = _text(outcome)
        failures.append(Failure(job.label, job.run_dir, error))
    return failures


def _text(outcome: Any) -> str:
    """An exception (or anything a launcher returned instead of an outcome) as one line."""
    if isinstance(outcome, BaseException):
        first = (str(outcome).strip().splitlines() or [""])[0]
        return f"{type(outcome).__name__}: {first}" if first else type(outcome).__name__
    return f"the launcher returned {outcome!r}"
