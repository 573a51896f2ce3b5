"""The built-in launchers: ``serial`` (one job after another, in this process) and ``local`` (a
pool of worker processes on this machine).

``local`` starts its workers with the ``spawn`` method: each is a fresh interpreter, so no torch
state, thread pool or CUDA context is shared with the parent. Each job sets its own CPU threads
from its ``train.threads`` in its worker; ``workers`` jobs at ``t`` threads each keep
``workers x t`` cores busy, and more than the machine has makes every run slower (the launcher
warns). On one GPU, several small runs may share the device: each worker is its own process.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import attrs

from fewmask.errors import FewmaskWarning
from fewmask.interfaces import Launcher
from fewmask.options import option


class SerialLauncher(Launcher):
    """One job after another in this process, its output on this terminal; the first failure
    stops the experiment with that failure's own error (what ``fewmask experiment`` always did)."""

    description = "one run after another in this process (the default)"
    isolates_failures = False

    def launch(
        self,
        jobs: Sequence[Any],
        work: Callable[[Any], Any],
        tell: Callable[..., None],
        folder: Path,
    ) -> list[Any]:
        outcomes = []
        for job in jobs:
            tell(job, "running")
            outcomes.append(work(job))
            tell(job, "done", outcomes[-1])
        return outcomes


@attrs.frozen
class LocalConfig:
    """Options of the ``local`` launcher."""

    workers: int = option(2, ge=1, help="jobs run at once, each in its own process")


class LocalLauncher(Launcher):
    """A pool of ``workers`` processes (spawned); each job's output goes to its run folder's
    ``job.log``. At most ``workers`` jobs are handed out at a time, so a job said to be running
    is running."""

    config_class = LocalConfig
    description = "a pool of worker processes on this machine (--workers N)"

    def __init__(self, config: LocalConfig):
        self.workers = config.workers

    def launch(
        self,
        jobs: Sequence[Any],
        work: Callable[[Any], Any],
        tell: Callable[..., None],
        folder: Path,
    ) -> list[Any]:
        warn_oversubscribed(self.workers, [job_threads(job) for job in jobs])
        outcomes: list[Any] = [None] * len(jobs)
        waiting = list(enumerate(jobs))
        running: dict[Future, int] = {}
        context = multiprocessing.get_context("spawn")
        size = min(self.workers, max(1, len(jobs)))
        pool = ProcessPoolExecutor(size, context)
        try:
            while waiting or running:
                while waiting and len(running) < self.workers:
                    index, job = waiting.pop(0)
                    try:
                        future = pool.submit(work, job)
                    except BrokenProcessPool:  # a worker died: its jobs failed, the rest go on
                        pool.shutdown(wait=False)
                        pool = ProcessPoolExecutor(size, context)
                        future = pool.submit(work, job)
                    running[future] = index
                    tell(job, "running")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    index = running.pop(future)
                    try:
                        outcomes[index] = future.result()
                    except BaseException as exc:  # the worker died (killed, out of memory)
                        outcomes[index] = exc
                    tell(jobs[index], "done", outcomes[index])
        except BaseException:  # Ctrl-C: queued jobs are dropped, running ones stop with theirs
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return outcomes


def job_threads(job: Any) -> int | None:
    """The CPU threads a job's run asks for (``train.threads``; None for ``auto``)."""
    threads = (getattr(job, "config", None) or {}).get("train", {}).get("threads", "auto")
    return threads if isinstance(threads, int) else None


def warn_oversubscribed(workers: int, threads: Sequence[int | None]) -> None:
    """Warn when ``workers`` runs at their ``threads`` ask for more threads than there are
    cores (``auto`` is counted as one: what it picks for small models, docs/performance.md)."""
    if not threads:
        return
    per_run = max(t or 1 for t in threads)
    cores = os.cpu_count() or 1
    busy = min(workers, len(threads)) * per_run
    if busy > cores:
        warnings.warn(
            f"--workers {workers} x train.threads {per_run} = {busy} threads on {cores} cores: "
            "the runs will slow each other down; use fewer workers or set -o train.threads=1",
            FewmaskWarning,
            stacklevel=2,
        )


def register(registry: Any) -> None:
    registry.add_launcher("serial", SerialLauncher)
    registry.add_launcher("local", LocalLauncher)
