"""Build components and Trainers from names: resolution against a registry, then construction.

Every function takes the session's registry explicitly (``fewmask.create`` and friends at the
package root default it to the process's session, :mod:`fewmask.session`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from fewmask.config.overrides import resolve_changed
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
from fewmask.runtime.allocator import apply_train_option
from fewmask.runtime.folder import RunFolder
from fewmask.runtime.memory import check_fits, estimate_memory
from fewmask.runtime.process import Process
from fewmask.runtime.run import Run
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
    """Any form of config -> a validated :class:`ResolvedConfig` (all problems at once).

    A ResolvedConfig without overrides is returned as it is: a config is resolved once."""
    overrides = list(overrides)
    if isinstance(config, (str, Path)):
        return load_config(config, overrides, registry=registry)
    if isinstance(config, ResolvedConfig):
        if not overrides:
            return config
        config = plain_config(config)
    data = unstructure(config) if isinstance(config, ExperimentConfig) else dict(config)
    return resolve_config(apply_overrides(data, overrides) if overrides else data, registry)


def build_trainer(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path,
    overrides: Iterable[str] = (),
    *,
    registry: Registry,
    run: Run | None = None,
) -> Trainer:
    """Validate the whole config, then build the data, the five components and the Trainer.

    The run (default: one in the config's ``run_dir``) is prepared first: its process set up
    and ``train.tune_malloc`` applied, before any data is read; the ``test_datasets`` are resized
    to the train split's image shape (:func:`fewmask.datasets.transforms.match_shape`)."""
    resolved = resolve(config, overrides, registry=registry)
    experiment, parts = resolved.experiment, resolved.components
    train = experiment.train
    if run is None:
        run = Run.prepare(experiment.run_dir, train.device, train.tune_malloc)
    else:
        apply_train_option(train.tune_malloc)  # process-wide, before the data is loaded

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
        meta_batch=train.meta_batch_size,
        inner_steps=getattr(inner, "steps", 1),
        dtype=getattr(torch, train.dtype),
    )
    check_fits(estimate, torch.device(train.device))  # before the backbone exists
    backbone = build("backbone", input_shape=shape, num_classes=sampler.ways)
    cross_domain = {}
    for part in resolved.test_datasets:
        label = cross_domain_label(part.name, part.options, cross_domain)
        cross_domain[label] = match_shape(part.build().load("test"), shape)
    return Trainer(
        backbone,
        masker,
        inner,
        objective,
        sampler,
        datasets,
        train,
        seed=experiment.seed,
        run_dir=run,
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
    run_dir: str | Path | RunFolder | Run,
    overrides: Iterable[str] = (),
    what: str = "RUN_DIR",
    *,
    registry: Registry,
    resume: bool = False,
) -> Trainer:
    """The Trainer of the run in ``run_dir``, restored from its checkpoint.

    It is rebuilt from the config the checkpoint holds (``config.yaml`` is a copy for people to
    read), with ``overrides`` applied and ``run_dir`` set to this folder, which may have moved;
    the config is resolved once (:func:`fewmask.config.overrides.resolve_changed`). ``what``
    names the argument in the error when the folder holds no checkpoint.

    With ``resume`` (to train on), overrides that change what is trained are refused, naming
    them (:data:`fewmask.config.overrides.RESUMABLE` lists what may change), and the accepted
    changes (and a re-planned schedule) are recorded in the run folder's ``resumes.jsonl``.
    Without it (to meta-test), overrides may not change the model
    (:data:`fewmask.config.overrides.TEST_FIXED`)."""
    given = run_dir if isinstance(run_dir, Run) else None
    if given is not None:
        state, stored = given.read_checkpoint(what)
        folder = given.folder
    else:
        folder = RunFolder(run_dir)
        state = folder.load_checkpoint(what)
        stored = folder.stored_config(state)
    overrides = list(overrides)
    try:
        resolved, changes = resolve_changed(
            stored, overrides, str(folder.path), registry, resume=resume, what=what
        )
        train = resolved.experiment.train  # the process is set up once the config names the device
        run = given if given is not None else Run.prepare(folder, train.device, train.tune_malloc)
        trainer = build_trainer(resolved, registry=registry, run=run)
        _restore(trainer, state, overrides, what)
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problems, f"the config of {folder.checkpoint}") from None
    if resume:  # what a crash during a checkpoint write left behind (never a live run's write:
        folder.discard_partial_checkpoints()  # resuming holds the folder's lock; testing does not)
        news = {path: new for path, (_, new) in changes.items()}
        run.record_resume(trainer.iteration, news, trainer.replanned)
    return trainer


def _restore(trainer: Trainer, state: Mapping[str, Any], overrides: list[str], what: str) -> None:
    """Load ``state`` into ``trainer``; tensors of another model are the overrides' fault."""
    try:
        trainer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        given = " ".join(f"-o {o}" for o in overrides) or "no overrides"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            [f"{what}: its checkpoint does not fit the model built with {given}: {first}"]
        ) from None


class RunResults(dict):
    """A run's meta-test results (the ``results.json`` mapping), and ``run_dir``, its folder."""

    def __init__(self, results: Mapping[str, Any], run_dir: Path | None):
        super().__init__(results)
        self.run_dir = run_dir


def train(
    config: ResolvedConfig | ExperimentConfig | Mapping[str, Any] | str | Path | None,
    run_dir: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    start: str = "new",
    callbacks: Sequence[Callable[[Trainer], None]] = (),
    registry: Registry,
    echo: Callable[[str], None] | None = None,
) -> RunResults:
    """Run this config in this folder, resumably: the whole of ``fewmask train`` as one call.

    ``run_dir`` (default: the config's) is the run's folder; ``start`` says what to do with what
    it holds (:data:`fewmask.runtime.run.START_MODES`): ``new`` (refuse a folder that holds a
    run), ``force`` (replace that run), ``resume`` (continue from the checkpoint; ``config``
    may then be None: the checkpoint holds it) or ``auto`` (reuse a finished run, resume a
    started one, start one otherwise). ``overrides`` are ``key=value`` changes (on a resume,
    only those :data:`fewmask.config.overrides.RESUMABLE` allows). ``echo`` receives one line
    per event worth telling (resumed from where, a re-planned schedule, the thread choice).
    ``callbacks`` are the fit's (called after every iteration); one with a ``start(trainer)``
    method is started first, once the Trainer is built and resumed.
    Returns the meta-test results (``results.json``) with the run's folder (``.run_dir``).

    Example::

        results = fewmask.train("examples/metaticket_glyphs.yaml", "runs/mt", start="auto")
    """
    say = echo or (lambda line: None)
    overrides = list(overrides)
    resolved = None
    if start != "resume":
        if config is None:
            raise ConfigError(["config: a new run needs a config (only a resume has none)"])
        given = [f"run_dir={json.dumps(str(run_dir), ensure_ascii=False)}"] if run_dir else []
        resolved = resolve(config, [*overrides, *given], registry=registry)
        run_dir = resolved.experiment.run_dir
    elif run_dir is None:
        raise ConfigError(["run_dir: resuming needs the run's folder"])
    device = resolved.experiment.train.device if resolved is not None else "cpu"
    run = Run(run_dir, Process.start(device))
    try:
        # a folder that holds something is read only under its lock; a new run is built (every
        # check passed, nothing written) before the lock creates its folder
        started = start in ("resume", "auto") and run.folder.path.exists()
        mode = run.decide(start) if started else "new"
        if mode == "finished":
            say(f"{run.folder.path} already finished; its results are reused")
            return RunResults(run.folder.read_results(), run.folder.path)
        if mode == "resume":
            trainer = build_run_trainer(run, overrides, "--resume", registry=registry, resume=True)
            _tell_resume(trainer, overrides, say)
        else:
            trainer = build_trainer(resolved, registry=registry, run=run)
            if not started:
                run.decide("new" if start == "auto" else start)  # the lock, then the policy
        run.write_config(trainer.config)  # the readable copy (the checkpoint holds it too)
        say(f"threads: {trainer.threads}")
        for callback in callbacks:  # a probe that needs the built (and resumed) Trainer
            start_callback = getattr(callback, "start", None)
            if callable(start_callback):
                start_callback(trainer)
        return RunResults(trainer.fit(callbacks=callbacks), trainer.run_dir)
    finally:
        run.release()  # held to the end of the run, however it ends


def _tell_resume(trainer: Trainer, overrides: Sequence[str], say: Callable[[str], None]) -> None:
    run = trainer.run
    note = ""
    if overrides:
        given = " ".join(f"-o {o}" for o in overrides)
        note = f" with {given} (changes recorded in {run.resumes})"
    source = f" from {run.loaded_from}" if run.loaded_from else ""
    say(f"resuming {run.path} at iteration {trainer.iteration}{source}{note}")
    if trainer.replanned:
        (before, after), lr = trainer.replanned["end"], trainer.replanned["lr"]
        plan = f"{after} iterations (it was {before})" if before != after else "the new lr"
        say(
            f"the learning-rate schedule is re-planned for {plan}; training continues at "
            f"lr {lr:.6g} (recorded in {run.resumes})"
        )


def cross_domain_label(name: str, options: Any, taken: Mapping[str, Any]) -> str:
    """A readable, unique label for a meta-test dataset: its name, plus a variant if any."""
    variant = getattr(options, "set", None)
    base = name if variant in (None, "main") else f"{name}:{variant}"
    label, suffix = base, 2
    while label in taken:
        label, suffix = f"{base}#{suffix}", suffix + 1
    return label
