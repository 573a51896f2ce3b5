"""Build components and Trainers from names: resolution against a registry, then construction.

Every function takes the session's registry explicitly (``fewmask.create`` and friends at the
package root default it to the process's session, :mod:`fewmask.session`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fewmask.config import (
    COMPONENT_FIELDS,
    ExperimentConfig,
    apply_overrides,
    read_config_file,
    unstructure,
)
from fewmask.errors import ConfigError
from fewmask.malloc import apply_train_option
from fewmask.options import converter
from fewmask.registry import Registry
from fewmask.resolve import (
    ResolvedConfig,
    plain_config,
    resolve_component,
    resolve_config,
)
from fewmask.run import RunFolder
from fewmask.trainer import Trainer
from fewmask.transforms import match_shape


def component_kind(kind: str, registry: Registry) -> str:
    """The registry kind named by ``kind`` or by its config field (``inner``)."""
    kind = COMPONENT_FIELDS.get(kind, kind)
    if kind not in registry.kinds():
        raise ConfigError(
            [f"kind: unknown component kind {kind!r}; kinds: {', '.join(registry.kinds())}"]
        )
    return kind


def create(kind: str, name: str, options: Any = None, *, registry: Registry, **kwargs: Any) -> Any:
    """Build a registered component: ``create("masker", "metaticket", {"init_sparsity": 0.5})``.

    ``options`` is a dict (checked like a config file's, nested component references included)
    or an instance of the component's config class; ``kwargs`` go to the constructor (e.g.
    ``input_shape`` and ``num_classes`` for backbones).
    """
    kind = component_kind(kind, registry)
    info = registry.get(kind, name)
    if info.config_cls is not None and isinstance(options, info.config_cls):
        options = converter.unstructure(options)
    problems: list[str] = []
    path = f"$.{next((f for f, k in COMPONENT_FIELDS.items() if k == kind), kind)}"
    resolved = resolve_component(registry, kind, {"name": name, "options": options}, path, problems)
    if problems or resolved is None:
        raise ConfigError(problems)
    return resolved.build(**kwargs)


def load_config(
    path: str | Path, overrides: Iterable[str] = (), *, registry: Registry
) -> ResolvedConfig:
    """Read, override, validate and resolve a config file in one go."""
    data = apply_overrides(read_config_file(path), overrides)
    return resolve_config(data, registry, source=str(path))


def resolve(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    *,
    registry: Registry,
) -> ResolvedConfig:
    """Any form of config -> a validated :class:`ResolvedConfig` (all problems at once)."""
    overrides = list(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides, registry=registry)
    if isinstance(config, ResolvedConfig):
        config = plain_config(config)
    data = unstructure(config) if isinstance(config, ExperimentConfig) else dict(config)
    return resolve_config(apply_overrides(data, overrides) if overrides else data, registry)


def build_trainer(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    *,
    registry: Registry,
) -> Trainer:
    """Validate the whole config, then build the data, the five components and the Trainer.

    Before any data is read it applies ``train.tune_malloc``; the ``test_datasets`` are resized
    to the train split's image shape (:func:`fewmask.transforms.match_shape`)."""
    resolved = resolve(config, overrides, registry=registry)
    experiment, parts = resolved.experiment, resolved.components
    apply_train_option(experiment.train.tune_malloc)  # process-wide, before the data is loaded

    def build(field: str, **kwargs: Any) -> Any:
        return parts[field].build(**kwargs)

    torch.manual_seed(experiment.seed)
    # cheap components first, so their construction errors come before any data is read
    sampler, masker = build("sampler"), build("masker")
    inner, objective, source = build("inner"), build("objective"), build("dataset")
    datasets = {split: source.load(split) for split in source.splits}
    backbone = build(
        "backbone", input_shape=datasets["train"].image_shape, num_classes=sampler.ways
    )
    cross_domain = {}
    for part in resolved.test_datasets:
        label = cross_domain_label(part.name, part.options, cross_domain)
        cross_domain[label] = match_shape(part.build().load("test"), datasets["train"].image_shape)
    return Trainer(
        backbone,
        masker,
        inner,
        objective,
        sampler,
        datasets,
        experiment.train,
        seed=experiment.seed,
        run_dir=experiment.run_dir,
        config=plain_config(resolved),
        cross_domain=cross_domain,
    )


def build_run_trainer(
    run_dir: str | Path | RunFolder,
    overrides: Iterable[str] = (),
    what: str = "RUN_DIR",
    *,
    registry: Registry,
) -> Trainer:
    """The Trainer of the run in ``run_dir``, resumed from its checkpoint.

    It is rebuilt from the config the checkpoint holds (``config.yaml`` is a copy for people to
    read), with ``overrides`` applied and ``run_dir`` set to this folder, which may have moved.
    ``what`` names the argument in the error when the folder holds no checkpoint."""
    run = RunFolder(run_dir)
    state = run.load_checkpoint(what)
    data = apply_overrides(run.stored_config(state), overrides)
    data["run_dir"] = str(run.path)
    try:
        trainer = build_trainer(data, registry=registry)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problems, f"the config of {run.checkpoint}") from None
    trainer.load_state_dict(state)
    run.discard_partial_checkpoints()  # what a crash during a checkpoint write left behind
    return trainer


def cross_domain_label(name: str, options: Any, taken: Mapping[str, Any]) -> str:
    """A readable, unique label for a meta-test dataset: its name, plus a variant if any."""
    variant = getattr(options, "set", None)
    base = name if variant in (None, "main") else f"{name}:{variant}"
    label, suffix = base, 2
    while label in taken:
        label, suffix = f"{base}#{suffix}", suffix + 1
    return label
