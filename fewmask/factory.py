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
from fewmask.config.overrides import changed_values, check_resume_changes, check_test_changes
from fewmask.config.resolve import (
    ResolvedConfig,
    plain_config,
    resolve_component,
    resolve_config,
)
from fewmask.datasets.transforms import match_shape
from fewmask.errors import ConfigError
from fewmask.options import converter
from fewmask.registry import Registry
from fewmask.runtime import distributed
from fewmask.runtime.allocator import apply_train_option
from fewmask.runtime.folder import RunFolder
from fewmask.runtime.memory import check_fits, estimate_memory
from fewmask.training.trainer import Trainer


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
    to the train split's image shape (:func:`fewmask.datasets.transforms.match_shape`)."""
    resolved = resolve(config, overrides, registry=registry)
    experiment, parts = resolved.experiment, resolved.components
    apply_train_option(experiment.train.tune_malloc)  # process-wide, before the data is loaded

    def build(field: str, **kwargs: Any) -> Any:
        return parts[field].build(**kwargs)

    torch.manual_seed(experiment.seed)
    # cheap components first, so their construction errors come before any data is read
    sampler, masker = build("sampler"), build("masker")
    inner, objective, source = build("inner"), build("objective"), build("dataset")
    check_data_sources(resolved, source)
    datasets = {split: source.load(split) for split in source.splits}
    shape = datasets["train"].image_shape
    estimate = estimate_memory(
        lambda: build("backbone", input_shape=shape, num_classes=sampler.ways),
        shape,
        ways=sampler.ways,
        shots=sampler.shots,
        queries=sampler.queries,
        meta_batch=experiment.train.meta_batch_size,
        inner_steps=getattr(inner, "steps", 1),
        dtype=getattr(torch, experiment.train.dtype),
    )
    check_fits(estimate, torch.device(experiment.train.device))  # before the backbone exists
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


def check_data_sources(resolved: ResolvedConfig, source: Any = None) -> None:
    """The dataset serves a ``train`` split and each of ``test_datasets`` a ``test`` split (a
    held-out set serves only ``test``). Builds the sources, reads no data; ``fewmask validate``
    runs it too."""
    source = source if source is not None else resolved.components["dataset"].build()
    problems = []
    if "train" not in source.splits:
        name = getattr(source, "name", "") or resolved.components["dataset"].name
        problems.append(
            f"$.dataset: {name} serves only the {', '.join(map(repr, source.splits))} split(s), "
            "no 'train' split to meta-train on; meta-test on it with test_datasets or "
            "`fewmask test RUN --dataset ...` instead"
        )
    for i, part in enumerate(resolved.test_datasets):
        if "test" not in part.build().splits:
            problems.append(f"$.test_datasets[{i}]: {part.name} serves no 'test' split")
    if problems:
        raise ConfigError(problems)


def build_run_trainer(
    run_dir: str | Path | RunFolder,
    overrides: Iterable[str] = (),
    what: str = "RUN_DIR",
    *,
    registry: Registry,
    resume: bool = False,
) -> Trainer:
    """The Trainer of the run in ``run_dir``, resumed from its checkpoint.

    It is rebuilt from the config the checkpoint holds (``config.yaml`` is a copy for people to
    read), with ``overrides`` applied and ``run_dir`` set to this folder, which may have moved.
    ``what`` names the argument in the error when the folder holds no checkpoint.

    With ``resume`` (to train on), overrides that change what is trained are refused, naming
    them (:data:`fewmask.config.overrides.RESUMABLE` lists what may change), and the accepted
    changes are recorded in the run folder's ``resumes.jsonl``. Without it (to meta-test),
    overrides may not change the model (:data:`fewmask.config.overrides.TEST_FIXED`)."""
    run = RunFolder(run_dir)
    state = run.load_checkpoint(what)
    stored = run.stored_config(state)
    data = apply_overrides(stored, overrides)
    data["run_dir"] = str(run.path)
    source = f"the config of {run.checkpoint}"
    try:
        resolved = resolve(data, registry=registry)
        changes = changed_values(
            _without_run_dir(_with_defaults(stored, registry)),
            _without_run_dir(plain_config(resolved)),
        )
        (check_resume_changes if resume else check_test_changes)(changes, what)
        trainer = build_trainer(resolved, registry=registry)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problems, source) from None
    trainer.load_state_dict(state)
    trainer.run = run  # the same folder, which knows the checkpoint it read (run.loaded_from)
    if resume:  # what a crash during a checkpoint write left behind (never a live run's write:
        run.discard_partial_checkpoints()  # resuming holds the folder's lock; testing does not)
    if resume and changes and distributed.is_main():
        run.record_resume(trainer.iteration, {path: new for path, (_, new) in changes.items()})
    return trainer


def _with_defaults(data: Mapping[str, Any], registry: Registry) -> Mapping[str, Any]:
    """A stored config with today's defaults filled in (an option added since it was saved is
    no change); as it is if it no longer resolves."""
    try:
        return plain_config(resolve_config(data, registry))
    except ConfigError:
        return data


def _without_run_dir(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "run_dir"}


def cross_domain_label(name: str, options: Any, taken: Mapping[str, Any]) -> str:
    """A readable, unique label for a meta-test dataset: its name, plus a variant if any."""
    variant = getattr(options, "set", None)
    base = name if variant in (None, "main") else f"{name}:{variant}"
    label, suffix = base, 2
    while label in taken:
        label, suffix = f"{base}#{suffix}", suffix + 1
    return label
