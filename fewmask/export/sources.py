"""Where a :class:`Subnetwork` comes from: a run folder or an export file; and the Trainer that
meta-tests an export exactly as ``fewmask test`` meta-tests its run."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

from fewmask.config.overrides import resolve_changed
from fewmask.errors import ConfigError, ExportError
from fewmask.export import packed, safetensors_io
from fewmask.export.subnetwork import FixedMasks, Subnetwork
from fewmask.factory import build_run_trainer, build_trainer
from fewmask.registry import Registry
from fewmask.runtime.run import Run
from fewmask.training.trainer import Trainer

ON_CPU = ["train.device=cpu", "train.progress=false"]
"""Overrides with which a run is read for export and adaptation (the weights go to the CPU)."""


def from_trainer(trainer: Trainer, source: str = "") -> Subnetwork:
    """The subnetwork a Trainer holds now (copied to the CPU)."""
    backbone = copy.deepcopy(trainer.backbone).cpu()
    masks = {n: m.cpu() for n, m in trainer.engine.frozen_masks().items()}
    inner = copy.deepcopy(trainer.inner)
    inner.attach(backbone)
    return Subnetwork(
        backbone,
        masks,
        inner,
        trainer.objective,
        dict(trainer.config or {}),
        tuple(trainer.datasets["train"].image_shape),  # type: ignore[arg-type]
        int(trainer.sampler.ways),
        int(trainer.iteration),
        source or str(trainer.run_dir or ""),
    )


def read_run(
    run: str | Path, *, registry: Registry, what: str = "RUN"
) -> tuple[Subnetwork, Trainer]:
    """The subnetwork of a run folder's checkpoint (its data is read to rebuild the run)."""
    trainer = build_run_trainer(run, ON_CPU, what, registry=registry)
    return from_trainer(trainer, str(run)), trainer


def is_export_file(path: str | Path) -> bool:
    """Whether ``path`` is a file (an export) rather than a run folder."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def load_export(path: str | Path, *, registry: Registry, what: str = "EXPORT") -> Subnetwork:
    """The network of a packed or safetensors export, regenerated or rebuilt, and verified."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{what}: {path} does not exist")
    if packed.is_packed(path):
        return packed.load_packed(path, registry=registry)
    if safetensors_io.is_safetensors(path):
        return safetensors_io.load_safetensors(path, registry=registry)
    if path.suffix == ".onnx":
        raise ExportError(
            f"{what}: {path} is an ONNX export, a forward pass only (no inner loop to adapt or "
            "meta-test); give the run folder, or its packed or safetensors export"
        )
    raise ExportError(
        f"{what}: {path} is neither a run folder nor a fewmask export (.fmpack or .safetensors)"
    )


def open_model(path: str | Path, *, registry: Registry, what: str = "MODEL") -> Subnetwork:
    """A run folder's subnetwork or an export's, whichever ``path`` is."""
    if is_export_file(path):
        return load_export(path, registry=registry, what=what)
    return read_run(path, registry=registry, what=what)[0]


def export_trainer(
    path: str | Path, overrides: Iterable[str] = (), *, registry: Registry
) -> Trainer:
    """A Trainer that meta-tests the export at ``path`` as ``fewmask test`` meta-tests its run.

    It is built from the export's config (``overrides`` applied; the model may not change),
    so it draws the same episodes; its backbone then holds the export's weights and its masker
    the export's masks. Results go to ``PATH.tests/test-*.json``."""
    sub = load_export(path, registry=registry)
    tests = Path(f"{path}.tests")
    try:
        resolved, _ = resolve_changed(
            sub.config, overrides, str(tests), registry, resume=False, what="EXPORT"
        )
        train = resolved.experiment.train
        run = Run.prepare(tests, train.device, train.tune_malloc)
        trainer = build_trainer(resolved, registry=registry, run=run)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problems, f"the config of {path}") from None
    trainer.backbone.load_state_dict(sub.backbone.state_dict())
    masker = FixedMasks(sub.masks).to(trainer.device, trainer.dtype)
    trainer.masker = trainer.engine.masker = masker
    trainer.iteration = sub.iteration
    return trainer
