"""fewmask-plugin-submitit: an experiment's or a sweep's runs as one Slurm job array.

Registers the launcher ``submitit``::

    fewmask experiment width-sweep CONFIG --launcher submitit \\
        -l partition=gpu -l gpus_per_node=1 -l timeout_min=240

Every run is one task of one job array (``AutoExecutor.map_array``). A task that Slurm preempts
or times out is requeued by submitit (the work is a ``Checkpointable``), and as every run starts
with ``start="auto"`` the requeued task resumes from the run's last checkpoint; so does the same
command run again after this launcher was stopped. ``cluster=local`` (or ``debug``) runs the
tasks on this machine without Slurm, for trying a setup out.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from fewmask import ConfigError, Launcher, hookimpl, option

__version__ = "0.1.0"

CLUSTERS = (None, "slurm", "local", "debug")


@attrs.frozen
class SubmititConfig:
    """Options of the ``submitit`` launcher (``-l KEY=VALUE``); unset ones are not passed."""

    cluster: str | None = option(
        None,
        choices=CLUSTERS,
        help="slurm, local or debug (default: slurm where sbatch exists, else local)",
    )
    folder: str | None = option(None, help="submitit's logs (default: OUT/launcher/submitit)")
    partition: str | None = option(None, help="Slurm partition (slurm_partition)")
    timeout_min: int | None = option(None, ge=1, help="time limit of each run, minutes")
    gpus_per_node: int | None = option(None, ge=0, help="GPUs per run")
    cpus_per_task: int | None = option(None, ge=1, help="CPU cores per run")
    mem_gb: float | None = option(None, gt=0, help="memory per run, GB")
    nodes: int | None = option(None, ge=1, help="nodes per run")
    tasks_per_node: int | None = option(None, ge=1, help="tasks per node")
    name: str | None = option(None, help="the jobs' name (default: the experiment's)")
    array_parallelism: int | None = option(
        None, ge=1, help="runs of the array at once (slurm_array_parallelism)"
    )
    parameters: dict[str, Any] = option(
        factory=dict,
        help="any other AutoExecutor.update_parameters key, as it is (e.g. {slurm_qos: high})",
    )
    poll_s: float = option(2.0, gt=0, help="seconds between checks of the jobs' states")


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            [
                "--launcher submitit: submitit is not installed; pip install submitit "
                "(or pip install fewmask-plugin-submitit, which brings it)"
            ]
        ) from None
    return submitit


def _parameters(config: SubmititConfig, name: str) -> dict[str, Any]:
    """The ``update_parameters`` keywords the options ask for (unset ones left out)."""
    generic = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes")
    params: dict[str, Any] = {k: getattr(config, k) for k in generic}
    params["tasks_per_node"] = config.tasks_per_node
    params["name"] = config.name or name
    params["slurm_partition"] = config.partition
    params["slurm_array_parallelism"] = config.array_parallelism
    params.update(config.parameters)
    return {k: v for k, v in params.items() if v is not None}


def _executor(submitit: Any, folder: Path, config: SubmititConfig, name: str) -> Any:
    executor = submitit.AutoExecutor(folder=str(folder), cluster=config.cluster)
    try:
        executor.update_parameters(**_parameters(config, name))
    except (NameError, AssertionError, TypeError, ValueError) as exc:
        problems = [f"--launcher submitit: {line}" for line in str(exc).splitlines()]
        raise ConfigError(problems) from None
    return executor


class _Work:
    """The job array's function; a requeued (preempted, timed-out) task calls it again."""

    def __init__(self, work: Callable[[Any], Any]):
        self.work = work

    def __call__(self, job: Any) -> Any:
        return self.work(job)

    def checkpoint(self, job: Any) -> Any:
        """submitit's hook on preemption or timeout: run the same job again; it resumes from
        its run's last checkpoint (every run starts with ``start="auto"``)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, job)


class SubmititLauncher(Launcher):
    """Each run a task of one Slurm job array (or local processes with ``cluster=local``)."""

    config_class = SubmititConfig
    description = "a Slurm job array through submitit (-l partition=... -l gpus_per_node=...)"

    def __init__(self, config: SubmititConfig):
        self.config = config
        self.submitit = _submitit()
        with tempfile.TemporaryDirectory() as scratch:  # bad parameters: before any job starts
            _executor(self.submitit, Path(scratch), config, "fewmask")

    def launch(
        self,
        jobs: Sequence[Any],
        work: Callable[[Any], Any],
        tell: Callable[..., None],
        folder: Path,
    ) -> list[Any]:
        logs = Path(self.config.folder) if self.config.folder else folder / "submitit"
        name = getattr(jobs[0], "experiment", "") or "fewmask"
        executor = _executor(self.submitit, logs, self.config, f"fewmask-{name}")
        submitted = executor.map_array(_Work(work), list(jobs))
        outcomes: list[Any] = [None] * len(jobs)
        pending = dict(enumerate(submitted))
        running: set[int] = set()
        while pending:
            for index, task in list(pending.items()):
                if task.done():
                    try:
                        outcomes[index] = task.result()
                    except Exception as exc:  # killed, cancelled, out of time without requeue
                        outcomes[index] = exc
                    del pending[index]
                    tell(jobs[index], "done", outcomes[index])
                elif index not in running and task.state == "RUNNING":
                    running.add(index)
                    tell(jobs[index], "running")
            if pending:
                time.sleep(self.config.poll_s)
        return outcomes


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_launcher("submitit", SubmititLauncher)


__all__ = ["SubmititConfig", "SubmititLauncher"]
