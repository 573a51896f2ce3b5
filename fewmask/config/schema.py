"""The config schema: the attrs classes of a run's config and phase 1 of structuring.

Structuring happens in two phases so every problem is reported at once, before any tensor exists:

1. the file (plus ``-o key=value`` overrides) becomes an :class:`ExperimentConfig` whose component
   references keep their ``options`` as plain dicts;
2. each reference's name is looked up in a registry and its options are structured into the
   component's own config class (:func:`fewmask.config.resolve.resolve_config`).

This module is the schema; files are read in :mod:`fewmask.config.files` and overridden in
:mod:`fewmask.config.overrides`. It never touches a registry itself.

Errors are lines ``$.path: problem`` collected into one :class:`fewmask.errors.ConfigError`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from cattrs.errors import ClassValidationError, IterableValidationError

from fewmask.errors import ConfigError
from fewmask.options import (
    ComponentRef,
    check_values,
    converter,
    option,
    render_error,
)

if TYPE_CHECKING:
    pass


@attrs.frozen
class TrainConfig:
    """How long and how to meta-train, validate, test and checkpoint."""

    iterations: int = option(30000, ge=1, le=10**9, help="outer (meta) iterations")
    meta_batch_size: int = option(4, ge=1, le=10_000, help="tasks per outer iteration (B)")
    val_every: int = option(1000, ge=1, help="validate every this many iterations")
    val_episodes: int = option(
        200, ge=0, le=10**7, help="validation tasks (fresh each time); 0 disables"
    )
    test_episodes: int = option(1000, ge=1, le=10**7, help="meta-test tasks, fixed by the seed")
    checkpoint_every: int = option(
        1000, ge=1, output_only=True, help="write the checkpoint every this many iterations"
    )
    log_every: int = option(
        10, ge=1, output_only=True, help="write training scalars every this many iterations"
    )
    histogram_every: int = option(
        1000,
        ge=1,
        output_only=True,
        help="write score histograms at iteration 0, every this many iterations and at the "
        "last one",
    )
    mask_image_every: int = option(
        1000,
        ge=0,
        output_only=True,
        help="write the masks of mask_image_layers as pictures to TensorBoard at iteration 0, "
        "every this many iterations and at the last one, in masking runs; 0 never",
    )
    mask_image_layers: tuple[str, ...] = option(
        (),
        output_only=True,
        help="the masked weights (parameter names) drawn by mask_image_every; empty: every one",
    )
    device: str = option("cpu", help="torch device: cpu, cuda, cuda:1, ...")
    dtype: str = option("float32", choices=("float32", "float64"), help="floating-point precision")
    data_on_device: bool = option(
        False,
        help="hold every split's uint8 images on train.device (moved once at start) and cut "
        "the episodes out there; the random draws stay on the CPU, so the episodes are the "
        "same. Costs device memory (miniImageNet's train split: 0.8 GB); worth it on a GPU "
        "with 84x84 images",
    )
    progress: bool = option(True, output_only=True, help="show a progress bar on stderr")
    engine: str = option(
        "auto",
        choices=("exact", "fast", "batched", "auto"),
        help="meta-gradient engine: exact = the plain per-task path; fast = fused SGD, fused "
        "BatchNorm double backward, channels_last; batched = every task of the meta-batch in "
        "one forward and backward, linear layers with low-rank per-task updates where that is "
        "cheaper (plain-SGD inner loops on the built-in MLPs, Conv4, ResNet-12 and wrapped "
        "modules of torch layers; other models take the unbatched path, said once in the log); "
        "auto = batched on the meta-steps where it was measured faster (MLPs up to 1M "
        "parameters, larger ones where the low-rank form covers them: the README job 2.1x), "
        "else exact. Same math, different rounding (docs/performance.md)",
    )
    cuda_graph: bool = option(
        False,
        help="CUDA, one process: capture the whole meta-step into a CUDA graph at the first "
        "iteration and replay it (8.5-9.4x on the glyph MLP on an H100, little on ResNet-12); "
        "components must change tensors in place (docs/performance.md)",
    )
    tune_malloc: bool = option(
        False,
        help="CPU: keep freed memory in glibc's heap instead of returning it to the kernel "
        "(1.8-2x on conv nets; process-wide, higher resident memory)",
    )
    threads: int | str = option(
        "auto",
        help="CPU threads (process-wide): auto = one for small models, one per core for large "
        "ones, OMP_NUM_THREADS if set (docs/performance.md); or a count",
    )

    def check(self) -> dict[str, str]:
        problems = {}
        if self.threads != "auto" and not (
            isinstance(self.threads, int) and 1 <= self.threads <= 1024
        ):
            problems["threads"] = (
                f"expected auto or an integer from 1 to 1024, got {self.threads!r}"
            )
        device = device_problem(self.device)
        if device:
            problems["device"] = device
        if self.cuda_graph and not self.device.startswith("cuda"):
            problems["cuda_graph"] = f"needs a CUDA train.device, got {self.device!r}"
        return problems


@attrs.frozen
class ExperimentConfig:
    """A whole experiment: the six components, the data and the training schedule."""

    backbone: ComponentRef = option(help="network (e.g. omniglot_mlp, mlp5)")
    dataset: ComponentRef = option(
        factory=lambda: ComponentRef("glyphs"), help="data source with train/val/test splits"
    )
    sampler: ComponentRef = option(
        factory=lambda: ComponentRef("episodic"), help="episode sampler (ways, shots, queries)"
    )
    masker: ComponentRef | None = option(
        None,
        help="what prunes the backbone's weights: dense (none), metaticket, iterand, ... "
        "(`fewmask plugins masker`); default: the objective's own (maml -> dense, "
        "metaticket -> metaticket)",
    )
    inner: ComponentRef = option(
        factory=lambda: ComponentRef("sgd"), help="inner-loop optimizer (lr, steps, first_order)"
    )
    objective: ComponentRef = option(
        factory=lambda: ComponentRef("maml"), help="what the outer loop learns: maml or metaticket"
    )
    train: TrainConfig = option(factory=TrainConfig, help="training schedule")
    test_datasets: list[ComponentRef] = option(
        factory=list,
        help="extra (cross-domain) meta-test datasets: their test splits, resized to the model's "
        "input, are evaluated after training",
    )
    seed: int = option(
        1, ge=0, le=2**32 - 1, help="seed of weights, scores and every episode stream"
    )
    run_dir: str = option("runs/default", help="where checkpoints, logs and results are written")

    def check(self) -> dict[str, str]:
        problem = run_dir_problem(self.run_dir)
        return {"run_dir": problem} if problem else {}


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot train (not a torch device, meta, a GPU this machine lacks)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        return f"{device!r} is not a torch device; use cpu, cuda or cuda:N"
    fix = "; use -o train.device=cpu"
    if parsed.type == "meta":
        return f"{device!r} holds no data (shapes only); use cpu or cuda"
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return f"{device!r}: this machine has no CUDA device{fix}"
        if parsed.index is not None and parsed.index >= count:
            last = f"cuda:{count - 1}"
            return f"{device!r}: this machine has {count} CUDA device(s), cuda:0 to {last}"
    elif parsed.type != "cpu":
        backend = getattr(torch.backends, parsed.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            return f"{device!r}: no {parsed.type} device is available here{fix}"
    return None


def run_dir_problem(run_dir: str) -> str | None:
    """Why ``run_dir`` cannot hold a run: empty, a NUL or unencodable character, too long, a
    file in the way, a system folder, no permission to write. Creates nothing."""
    if not run_dir.strip():
        return "must name a folder (use '.' for the current one)"
    if "\0" in run_dir:
        return "contains a NUL character"
    try:
        run_dir.encode("utf-8")
    except UnicodeEncodeError:
        return f"{run_dir!r} is not valid text (a lone surrogate); rename the folder"
    try:
        encoded = os.fsencode(run_dir)
    except UnicodeError:
        return f"{run_dir!r} holds characters this system cannot write in a file name"
    path = Path(os.path.abspath(run_dir))
    if len(encoded) > 1024 or any(len(os.fsencode(part)) > 255 for part in path.parts):
        return "is too long (at most 255 bytes a folder name, 1024 in all)"
    if path.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        return f"{run_dir!r} is inside the system folder /{path.parts[1]}; choose another folder"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        return f"{run_dir!r} is a file, not a folder"
    if existing != path and not existing.is_dir():
        return f"{run_dir!r} cannot be created: {str(existing)!r} is a file"
    if not _writable(existing):
        return (
            f"{str(existing)!r} is not writable by you: give write permission (chmod u+w "
            f"{shlex.quote(str(existing))}), or write a new run to another folder"
        )
    return None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


COMPONENT_FIELDS: dict[str, str] = {
    "backbone": "backbone",
    "dataset": "dataset",
    "sampler": "sampler",
    "masker": "masker",
    "inner": "inner_optimizer",
    "objective": "objective",
}
"""Config field -> registry kind."""


def with_default_names(data: Mapping[str, Any]) -> dict[str, Any]:
    """Fill the default ``name`` of a component given only ``options`` (e.g. by an override)."""
    data = dict(data)
    for field in attrs.fields(ExperimentConfig):
        ref = data.get(field.name)
        if field.name in COMPONENT_FIELDS and isinstance(ref, Mapping) and "name" not in ref:
            if isinstance(field.default, attrs.Factory):
                data[field.name] = {"name": field.default.factory().name, **ref}
    return data


def parse_experiment(data: Any, source: str | None = None) -> ExperimentConfig:
    """Phase 1: plain data -> :class:`ExperimentConfig` (options stay dicts)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"$: expected a mapping at the top level, got {type(data).__name__}"], source
        )
    try:
        experiment = converter.structure(with_default_names(data), ExperimentConfig)
    except (ClassValidationError, IterableValidationError, TypeError) as exc:
        raise ConfigError(render_error(exc, "$"), source) from None
    problems = check_values(experiment)
    if problems:
        raise ConfigError(problems, source)
    return experiment


def unstructure(config: ExperimentConfig) -> dict[str, Any]:
    """Plain data for YAML/JSON (the inverse of :func:`parse_experiment`)."""
    return converter.unstructure(config)
