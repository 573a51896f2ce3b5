"""What every experiment shares: settings, variant runs, result tables, TensorBoard output.

An experiment starts from one ordinary run config (the *base*: dataset, backbone, sampler, inner
loop, schedule) and runs *variants* of it, each an ordinary fewmask run in
``OUT/runs/<variant>/``. Plan, launch, collect: every variant's config is validated first,
then the variants become jobs (:mod:`fewmask.experiments.jobs`) that the experiment's launcher
runs (:meth:`Experiment.run_variants`), then the experiment writes its tables from the run
folders. A variant whose ``results.json`` exists is reused, one with only a checkpoint is
resumed, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from fewmask.builtins.launchers import SerialLauncher
from fewmask.config import TrainConfig
from fewmask.config.resolve import ResolvedConfig, plain_config
from fewmask.errors import ConfigError
from fewmask.experiments.jobs import Job, Probe
from fewmask.experiments.launch import Failure, Tracker, launch_jobs
from fewmask.experiments.outputs import discard_outputs, record
from fewmask.interfaces import Launcher
from fewmask.options import structure_config
from fewmask.runtime.folder import RunFolder
from fewmask.session import resolve as resolve_config

SETTINGS_PATH = "$.experiment"


@attrs.frozen
class ExperimentInfo:
    """One registered experiment: its settings class and the function that runs it."""

    name: str
    settings_cls: type
    run: Callable[[Experiment, Any], list[dict[str, Any]]]
    description: str


EXPERIMENTS: dict[str, ExperimentInfo] = {}


def register(name: str, settings_cls: type, description: str):
    """Decorator: add ``run(experiment, settings) -> rows`` to :data:`EXPERIMENTS`."""

    def add(run: Callable[[Experiment, Any], list[dict[str, Any]]]):
        EXPERIMENTS[name] = ExperimentInfo(name, settings_cls, run, description)
        return run

    return add


def structure_settings(cls: type, data: Mapping[str, Any]) -> Any:
    """``data`` as a ``cls`` settings object; every problem reported as ``$.experiment.<field>``."""
    return structure_config(cls, data, SETTINGS_PATH)


def check_choices(values: Iterable[Any], allowed: Iterable[Any], field: str) -> None:
    """Raise one ConfigError naming every entry of ``values`` not in ``allowed``."""
    allowed = list(allowed)
    names = ", ".join(map(str, allowed))
    problems = [
        f"{SETTINGS_PATH}.{field}[{i}]: unknown {value!r}; choose from {names}"
        for i, value in enumerate(values)
        if value not in allowed
    ]
    if problems:
        raise ConfigError(problems)


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` applied recursively (a new dict).

    Mappings merge, except a component reference (a mapping with a ``name``), which replaces the
    old one whole: another component's options must not carry over. Other values replace.
    """
    out = json.loads(json.dumps(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and "name" not in value and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


@attrs.define
class Variant:
    """One run of an experiment: a label, its full config data and what to do with it."""

    label: str
    data: dict[str, Any]
    train: bool = True  # False: meta-test the freshly built model without meta-training

    @property
    def run(self) -> RunFolder:
        """The variant's run folder (``OUT/runs/<label>``)."""
        return RunFolder(self.data["run_dir"])


class Experiment:
    """The base config, the output folder and the helpers an experiment's ``run`` uses."""

    def __init__(
        self,
        name: str,
        base: Mapping[str, Any],
        out: Path,
        progress: bool = True,
        force: bool = False,
        launcher: Launcher | None = None,
        collect_only: bool = False,
    ):
        self.name, self.base, self.out = name, dict(base), Path(out)
        self.progress = progress
        self.force = force  # start over: remove what an earlier run of it wrote, once validated
        self.launcher = launcher or SerialLauncher()
        self.collect_only = collect_only  # gather what finished; start nothing
        self.failures: list[Failure] = []  # jobs that ended without results
        self.missing: list[str] = []  # with collect_only: the variants not finished yet
        self.planned = 0  # jobs planned so far
        self._writer = None

    def record(self, *paths: Path) -> None:
        """List ``paths`` (inside OUT) as written by this experiment, for ``--force``
        (:mod:`fewmask.experiments.outputs`); every helper here records what it writes."""
        self._start_over()
        record(self.out, self.name, paths)

    def _start_over(self) -> None:
        """With ``force``, remove the outputs an earlier run wrote (only those), once: after
        the variants are validated, before anything is written."""
        if self.force:
            self.force = False
            discard_outputs(self.out)

    # -------------------------------------------------------------- variants
    def variant(
        self,
        label: str,
        patch: Mapping[str, Any],
        train: bool = True,
        cross_domain: bool = False,
    ) -> Variant:
        """The base config patched into one run in ``OUT/runs/<label>``; the base's
        ``test_datasets`` are kept only for a ``cross_domain`` variant."""
        data = merge(self.base, patch)
        if not cross_domain:
            data["test_datasets"] = []
        data["run_dir"] = str(self.out / "runs" / label)
        data.setdefault("train", {})["progress"] = self.progress
        return Variant(label, data, train)

    def validate(self, variants: Sequence[Variant]) -> None:
        """Resolve every variant's config first, so a typo stops the experiment before any run;
        a run folder that holds another config is refused too (unless ``force`` clears it)."""
        problems = []
        for variant in variants:
            try:
                resolve_config(variant.data)
            except ConfigError as exc:
                problems += [f"variant {variant.label}: {p}" for p in exc.problems]
        if problems:
            raise ConfigError(problems)
        self._start_over()
        for variant in variants:
            self.check_saved(variant)

    def run_variants(
        self, variants: Sequence[Variant], probes: Sequence[Probe | None] | None = None
    ) -> list[dict[str, Any] | None]:
        """Plan, launch, collect: every variant as a job (with its probe, by name), the
        unfinished ones run by the experiment's launcher, then each variant's results, None
        for one that has none (failed: in :attr:`failures`; not run with ``collect_only``:
        in :attr:`missing`). Finished runs are reused, started ones resumed."""
        self._start_over()
        probes = list(probes) if probes is not None else [None] * len(variants)
        jobs = [
            Job(v.label, plain_config(resolve_config(v.data)), v.train, probe, self.name)
            for v, probe in zip(variants, probes, strict=True)
        ]
        self.planned += len(jobs)
        for job in jobs:
            self.record(job.run_dir)
            if self.launcher.isolates_failures:
                self.record(job.log)
        tracker = Tracker(self.name, len(jobs), self.progress)
        todo = []
        for job in jobs:
            if RunFolder(job.run_dir).has_results():
                tracker.reused(job)
            else:
                todo.append(job)
        if todo and self.collect_only:
            self.missing += [job.label for job in todo]
        elif todo:
            self.failures += launch_jobs(self.launcher, todo, tracker, self.out / "launcher")
        return [
            RunFolder(job.run_dir).read_results() if RunFolder(job.run_dir).has_results() else None
            for job in jobs
        ]

    def check_saved(self, variant: Variant) -> ResolvedConfig:
        """The variant's resolved config; a different one already in its folder is an error.

        Cheap (no data is read), so finished variants are checked without being rebuilt."""
        resolved = resolve_config(variant.data)
        run = variant.run
        if not run.config.is_file():
            return resolved
        before = _comparable(_with_defaults(run.read_config()))
        if before != _comparable(plain_config(resolved)):
            raise ConfigError(
                [
                    f"{run.path} holds a run of a different config; use another --out, "
                    "or --force to start the experiment over"
                ]
            )
        return resolved

    # -------------------------------------------------------------- outputs
    @property
    def writer(self):
        """The experiment's TensorBoard writer (``OUT/tensorboard``)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.record(self.out / "tensorboard")
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        return self._writer

    def write_table(self, stem: str, rows: Sequence[Mapping[str, Any]], markdown: str) -> None:
        """``OUT/<stem>.csv`` (every row and column) and ``OUT/<stem>.md``; the table also goes
        to TensorBoard as text."""
        self.record(self.out / f"{stem}.csv", self.out / f"{stem}.md")
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(self.out / f"{stem}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        (self.out / f"{stem}.md").write_text(markdown)
        self.writer.add_text(stem, markdown)

    def write_image(self, stem: str, image) -> Path:
        """Save a PIL image as ``OUT/<stem>.png`` and add it to TensorBoard."""
        path = self.out / f"{stem}.png"
        self.record(path)
        image.save(path)
        pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        self.writer.add_image(stem, pixels.view(image.height, image.width, 3), dataformats="HWC")
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _with_defaults(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A saved config with today's defaults filled in, so that an option added since it was
    written (at its default) is not a change; as it is if it no longer resolves."""
    try:
        return plain_config(resolve_config(data))
    except ConfigError:
        return data


def _comparable(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config without the fields that do not change results (``run_dir``: an experiment's
    output folder may be moved or renamed and still be reused)."""
    data = json.loads(json.dumps(data))
    data.pop("run_dir", None)
    for field in attrs.fields(TrainConfig):
        if field.metadata.get("output_only"):
            data.get("train", {}).pop(field.name, None)
    return data


# ------------------------------------------------------------------ statistics and tables


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def percent(value: float, spread: float | None = None) -> str:
    """``57.12`` or ``57.12 +- 1.60`` from fractions."""
    text = f"{100 * value:.2f}"
    return text if spread is None else f"{text} +- {100 * spread:.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


MISSING = "missing"
"""A table cell of a variant without results (failed, or not finished yet)."""


def result_row(results: Mapping[str, Any] | None) -> dict[str, Any]:
    """The columns every variant contributes: accuracy, its CI, sparsity, iterations; a
    variant without results has them empty and ``status: missing``."""
    if results is None:
        return {**dict.fromkeys(RESULT_COLUMNS), "status": MISSING}
    return {
        "accuracy": results["accuracy"],
        "ci95": results["ci95"],
        "sparsity": results["sparsity"],
        "iterations": results["iteration"],
        "episodes": results["episodes"],
        "status": "finished",
    }


RESULT_COLUMNS = ("accuracy", "ci95", "sparsity", "iterations", "episodes")


def cell(results: Mapping[str, Any] | None) -> str:
    """``57.12 +- 1.60`` (accuracy and its 95% CI), or ``missing``."""
    return MISSING if results is None else percent(results["accuracy"], results["ci95"])
