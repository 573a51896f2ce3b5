"""fewmask-plugin-ray: an experiment's or a sweep's runs as Ray tasks.

Registers the launcher ``ray``::

    fewmask experiment width-sweep CONFIG --launcher ray -l address=auto -l num_gpus=0.25

Each run is one Ray task asking for ``num_cpus`` and ``num_gpus`` (a fraction lets several small
runs share a GPU). With ``address`` the tasks go to that cluster (``auto``: the one this machine
belongs to); without it a local cluster of ``local_cpus`` CPUs is started on 127.0.0.1 for the
command and stopped after it. The run folders must be on a file system every node sees. A task
that Ray retries after a node failure resumes from its run's checkpoint (``start="auto"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from fewmask import ConfigError, Launcher, hookimpl, option

__version__ = "0.1.0"


@attrs.frozen
class RayConfig:
    """Options of the ``ray`` launcher (``-l KEY=VALUE``)."""

    address: str | None = option(
        None, help="a Ray cluster's address (auto: this machine's); none: start a local one"
    )
    num_cpus: float = option(1.0, gt=0, help="CPUs each run asks for")
    num_gpus: float = option(0.0, ge=0, help="GPUs each run asks for (a fraction to share one)")
    local_cpus: int = option(2, ge=1, help="CPUs of the local cluster started without address")
    max_retries: int = option(
        1, ge=0, help="times Ray reruns a run whose worker died (it resumes from its checkpoint)"
    )


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            [
                "--launcher ray: Ray is not installed; pip install ray "
                "(or pip install fewmask-plugin-ray, which brings it)"
            ]
        ) from None
    return ray


def _call(work: Callable[[Any], Any], job: Any) -> Any:
    """The Ray task: one run (``work`` returns its outcome; a run's failure is not raised)."""
    return work(job)


class RayLauncher(Launcher):
    """Each run a Ray task; a local cluster when no address is given."""

    config_class = RayConfig
    description = "Ray tasks on a cluster (-l address=auto) or a local one"

    def __init__(self, config: RayConfig):
        self.config = config
        self.ray = _ray()

    def launch(
        self,
        jobs: Sequence[Any],
        work: Callable[[Any], Any],
        tell: Callable[..., None],
        folder: Path,
    ) -> list[Any]:
        ray, config = self.ray, self.config
        started = not ray.is_initialized()
        if started and config.address:
            ray.init(address=config.address, log_to_driver=False)
        elif started:
            ray.init(
                num_cpus=config.local_cpus,
                num_gpus=0,
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
        try:
            task = ray.remote(_call).options(
                num_cpus=config.num_cpus,
                num_gpus=config.num_gpus,
                max_retries=config.max_retries,
            )
            refs = {task.remote(work, job): index for index, job in enumerate(jobs)}
            outcomes: list[Any] = [None] * len(jobs)
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    index = refs.pop(ref)
                    try:
                        outcomes[index] = ray.get(ref)
                    except Exception as exc:  # the worker died, the task was cancelled
                        outcomes[index] = exc
                    tell(jobs[index], "done", outcomes[index])
            return outcomes
        finally:
            if started:
                ray.shutdown()


@hookimpl
def fewmask_register(registry) -> None:
    registry.add_launcher("ray", RayLauncher)


__all__ = ["RayConfig", "RayLauncher"]
