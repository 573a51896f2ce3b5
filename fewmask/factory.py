"""Build components and Trainers from names: the registry lookups behind configs and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from fewmask.config import (
    ExperimentConfig,
    ResolvedConfig,
    apply_overrides,
    converter,
    load_config,
    plain_config,
    read_config_file,
    resolve_config,
)
from fewmask.errors import ConfigError
from fewmask.plugins import default_registry
from fewmask.registry import Registry
from fewmask.trainer import RUN_CONFIG, Trainer


def create(
    kind: str, name: str, options: Any = None, registry: Registry | None = None, **kwargs: Any
) -> Any:
    """Build a registered component: ``create("masker", "metaticket", {"init_sparsity": 0.5})``."""
    return (registry or default_registry()).create(kind, name, options, **kwargs)


def resolve(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
) -> ResolvedConfig:
    """Any form of config -> a validated :class:`ResolvedConfig` (all problems at once)."""
    overrides = list(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides, registry)
    if isinstance(config, ResolvedConfig):
        config = config.experiment
    data = converter.unstructure(config) if isinstance(config, ExperimentConfig) else dict(config)
    return resolve_config(apply_overrides(data, overrides) if overrides else data, registry)


def build_trainer(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
) -> Trainer:
    """Validate the whole config, then build the data, the five components and the Trainer."""
    resolved = resolve(config, overrides, registry)
    experiment, parts = resolved.experiment, resolved.components

    def build(field: str, **kwargs: Any) -> Any:
        info, options = parts[field]
        return info.build(options, **kwargs)

    torch.manual_seed(experiment.seed)
    # cheap components first, so their construction errors come before any data is read
    sampler, masker = build("sampler"), build("masker")
    inner, objective, source = build("inner"), build("objective"), build("dataset")
    datasets = {split: source.load(split) for split in source.splits}
    backbone = build(
        "backbone", input_shape=datasets["train"].image_shape, num_classes=sampler.ways
    )
    cross_domain = {}
    for field in sorted(parts):
        if field.startswith("test_datasets["):
            label = cross_domain_label(parts[field][0].name, parts[field][1], cross_domain)
            cross_domain[label] = build(field).load("test")
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
    run_dir: str | Path, overrides: Iterable[str] = (), what: str = "RUN_DIR"
) -> Trainer:
    """The Trainer of the run saved in ``run_dir`` (from its config file), not yet resumed;
    ``what`` names the argument in the error when ``run_dir`` is not a fewmask run."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise ConfigError([f"{what}: {run_dir} has no {RUN_CONFIG}; is it a fewmask run?"])
    return build_trainer(read_config_file(run_dir / RUN_CONFIG), [*overrides, f"run_dir={run_dir}"])


def cross_domain_label(name: str, options: Any, taken: Mapping[str, Any]) -> str:
    """A readable, unique label for a meta-test dataset: its name, plus a variant if any."""
    variant = getattr(options, "set", None)
    base = name if variant in (None, "main") else f"{name}:{variant}"
    label, suffix = base, 2
    while label in taken:
        label, suffix = f"{base}#{suffix}", suffix + 1
    return label
