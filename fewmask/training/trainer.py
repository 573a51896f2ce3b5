"""The Trainer: meta-training, validation, meta-test and checkpoints, read top to bottom.

Compose it from Python objects::

    trainer = Trainer(backbone, masker, inner, objective, sampler, datasets, TrainConfig(...))
    trainer.fit()

or from a config with :func:`fewmask.factory.build_trainer`. The Trainer attaches the masker to
the backbone, so pass a fresh (unattached) masker.

The Trainer is the loop, its logging, validation and meta-test. Its :class:`Run` (from
``run_dir``: a path, a :class:`~fewmask.runtime.folder.RunFolder` or a prepared
:class:`~fewmask.runtime.run.Run`) owns the process (device, ranks, threads), the folder's lock,
files and records; the checkpoint holds the config the Trainer was built from, so
:func:`fewmask.factory.train` rebuilds and resumes a run from the checkpoint alone.

Under ``torchrun`` each meta-batch's tasks are split across the ranks (the Run's
:class:`~fewmask.runtime.process.Process`); rank 0 alone logs, prints and writes files.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from fewmask.config import TrainConfig
from fewmask.engine import Engine, EngineOptions
from fewmask.engine.batched import batching_pays
from fewmask.engine.graphs import GraphedMetaStep
from fewmask.errors import ConfigError, DatasetError, NonFiniteError
from fewmask.interfaces import (
    Backbone,
    Episode,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Masker,
    MetaObjective,
)
from fewmask.options import converter
from fewmask.runtime.checkpoint import discard_partial_writes, load_checkpoint, save_checkpoint
from fewmask.runtime.folder import RunFolder
from fewmask.runtime.progress import Progress
from fewmask.runtime.run import Run
from fewmask.training.checks import check_backbone_fits, check_train_config
from fewmask.training.evaluation import meta_test
from fewmask.training.finite import check_meta_parameters, first_non_finite
from fewmask.training.loggers import (
    MetricLogger,
    NullLogger,
    RunLogger,
    run_config_text,
    run_hparams,
)
from fewmask.training.metrics import Accuracy, mask_sparsity
from fewmask.training.pictures import mask_grid

ENGINE_OPTIONS = {
    "exact": EngineOptions,
    "fast": EngineOptions.fast,
    "batched": EngineOptions.batched_path,
}
"""``train.engine`` -> the :class:`EngineOptions` it selects (``auto``: :func:`engine_options`)."""


def engine_options(name: str, backbone: Backbone, inner: InnerOptimizer) -> EngineOptions:
    """The options ``train.engine: name`` selects; ``auto`` batches the meta-steps where the
    batched path applies and was measured faster (:func:`~fewmask.engine.batched.batching_pays`,
    :meth:`EngineOptions.auto`), the others take the exact path; it has no fallback to
    announce."""
    if name == "auto":
        return EngineOptions.auto() if batching_pays(backbone, inner) else EngineOptions()
    return ENGINE_OPTIONS[name]()


EVAL_CHUNK = 100  # episodes drawn per vectorised sampler call at evaluation


class Trainer:
    """Meta-trains ``objective``'s meta-parameters over episodes of ``datasets["train"]``."""

    def __init__(
        self,
        backbone: Backbone,
        masker: Masker,
        inner: InnerOptimizer,
        objective: MetaObjective,
        sampler: EpisodeSampler,
        datasets: Mapping[str, FewShotDataset],
        train: TrainConfig | None = None,
        *,
        seed: int = 1,
        run_dir: str | Path | RunFolder | Run | None = None,
        config: Any = None,
        cross_domain: Mapping[str, FewShotDataset] | None = None,
    ):
        self.train_config = train = train or TrainConfig()
        check_train_config(train)  # e.g. iterations=0 from Python
        # the run owns the process: device (cuda:LOCAL_RANK under torchrun), ranks, threads
        if isinstance(run_dir, Run):
            self.owner = run_dir
        else:
            self.owner = Run.prepare(run_dir, train.device, tune_malloc=False)
        self.process = self.owner.process
        self.device = self.process.device
        self.dtype = getattr(torch, train.dtype)
        self.backbone, self.masker, self.inner = backbone, masker, inner
        self.objective, self.sampler, self.datasets = objective, sampler, dict(datasets)
        self.seed = seed
        self.config = config  # plain data of the experiment config, stored in checkpoints

        self.cross_domain = dict(cross_domain or {})
        if "train" not in self.datasets:
            raise ConfigError(["$.dataset: the datasets need a 'train' split"])
        shape = self.datasets["train"].image_shape
        for split, dataset in [*self.datasets.items(), *self.cross_domain.items()]:
            if dataset.image_shape != shape:
                raise DatasetError(
                    f"{dataset.name}: split '{split}' has images of shape {dataset.image_shape}, "
                    f"but the train split has {shape}; resize them to match "
                    "(fewmask.datasets.transforms.match_shape)"
                )
            sampler.check(dataset)
        check_backbone_fits(backbone, shape, getattr(sampler, "ways", None))
        # process-wide; recorded in the results and the TensorBoard config
        self.threads = self.owner.apply_threads(train.threads, backbone, shape, sampler)
        masker.attach(backbone)
        backbone.to(self.device, self.dtype)
        masker.to(self.device, self.dtype)
        if train.data_on_device:  # episodes cut out where the model runs; the same draws
            self.datasets = {k: d.to(self.device) for k, d in self.datasets.items()}
            self.cross_domain = {k: d.to(self.device) for k, d in self.cross_domain.items()}
        options = engine_options(train.engine, backbone, inner)
        self.engine = Engine(backbone, masker, inner, objective, options)
        self.meta_params = self.engine.meta_params
        self._check_mask_image_layers()
        self._meta_step = self.engine.meta_step
        if train.cuda_graph:
            if self.process.world_size > 1:
                raise ConfigError(["$.train.cuda_graph: not under torchrun (the step all-reduces)"])
            self._meta_step = GraphedMetaStep(self.engine)
        if not self.meta_params:
            raise ConfigError(["$.objective: it selected no meta-parameters to learn"])
        self.optimizer = objective.build_optimizer(list(self.meta_params.values()))
        self.scheduler = objective.build_scheduler(self.optimizer, train.iterations)
        self._last_lr = self.scheduler.get_last_lr()[0]  # the rate of the last update, logged
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.replanned: dict[str, Any] | None = None  # set by a resume that re-plans the schedule
        self.logger: MetricLogger = NullLogger()
        self._sync_ranks()

    # ---------------------------------------------------------------- meta-training
    def fit(self, *, callbacks: Sequence[Callable[[Trainer], None]] = ()) -> dict[str, Any]:
        """Meta-train to ``train.iterations``, then meta-test; returns the results dict.

        Each of ``callbacks`` is called with the Trainer once after every iteration (after its
        scalars are logged, before its validation and checkpoint), on every rank under
        torchrun; ``trainer.iteration`` counts the iterations done, and ``trainer.logger``
        writes to this run's logs. A resumed run calls them from the next iteration on.

        With a run folder, the Run holds its lock meanwhile (another process writing the
        same folder is a RunLockedError); a non-finite value stops the run with NonFiniteError
        and is recorded in the folder's ``stopped.json``. A run that already finished (its
        results written at its last iteration) is not trained or tested again: its results are
        returned."""
        cfg = self.train_config
        if self.run is not None and self.iteration >= cfg.iterations and self.run.has_results():
            results = self.run.read_results()
            if results.get("iteration") == self.iteration:
                return results
        hold = ExitStack()
        hold.enter_context(self.owner.held())
        self.owner.clear_stop()
        warned = False
        try:
            self._open_logger()
            show = cfg.progress and self.process.is_main
            if self.iteration == 0:
                self._log_start()
            steps, seconds = 0, 0.0  # since the last logged iteration
            with Progress(cfg.iterations, "meta-train", self.iteration, show) as bar:
                while self.iteration < cfg.iterations:
                    start = time.perf_counter()
                    stats = self.train_step()  # ends in a host read: the step is done
                    steps, seconds = steps + 1, seconds + time.perf_counter() - start
                    it = self.iteration  # iterations done
                    if it % cfg.log_every == 0 or it == cfg.iterations:
                        self._log_train(it, stats)
                        self.logger.wall_clock("seconds_per_iteration", seconds / steps, it)
                        steps, seconds = 0, 0.0
                        lr = self._last_lr
                        warned = check_meta_parameters(self.meta_params, it - 1, lr, warned)
                    if it % cfg.histogram_every == 0 or it == cfg.iterations:
                        for name, score in self.masker.meta_parameters().items():
                            self.logger.histogram(f"scores/{name}", score, it)
                    every = cfg.mask_image_every
                    if every and (it % every == 0 or it == cfg.iterations):
                        self._log_mask_picture(it)
                    for callback in callbacks:
                        callback(self)
                    if cfg.val_episodes and it % cfg.val_every == 0 and "val" in self.datasets:
                        val = self.evaluate("val", cfg.val_episodes, seed=self._val_seed(it))
                        self.logger.scalar("val/accuracy", val.mean, it)
                        self.logger.scalar("val/loss", val.loss, it)
                        bar.write(f"validation at iteration {it} (every {cfg.val_every}): {val}")
                    due = it % cfg.checkpoint_every == 0 or it == cfg.iterations
                    if due and self.run_dir is not None:
                        self.logger.flush()  # metrics up to the checkpoint survive a crash
                        self.save()
                    bar.update(it, " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
            results = self.test()
            self._log_results(results)
        except NonFiniteError as exc:
            self.owner.record_stop(self.iteration, str(exc))
            raise
        finally:
            self.logger.close()
            self.logger = NullLogger()
            hold.close()
        return results

    def train_step(self, batch: Sequence[Episode] | None = None) -> dict[str, float]:
        """One outer iteration on ``batch`` (default: B tasks drawn from the train split).

        The engine's mean meta-gradient goes into the meta-parameters' ``.grad``, the optimizer
        and then the objective's scheduler step. Returns the mean query ``loss`` and the
        objective's metrics. Under torchrun every rank draws (or is given) all B tasks and the
        engine differentiates this rank's share.
        """
        it = self.iteration
        if batch is None:
            batch = self.sampler.sample_many(
                self.datasets["train"], self.generator, self.train_config.meta_batch_size
            )
        result = self._meta_step(batch)  # no host synchronisation inside
        values = [result.loss, *result.metrics.values()]
        if result.grads:  # whether every gradient is finite, read together with the stats
            finite = [torch.isfinite(g).all() for g in result.grads.values()]
            values.append(torch.stack(finite).all())
        read = torch.stack([v.to(result.loss.device, torch.float64) for v in values]).tolist()
        stats = dict(zip(["loss", *result.metrics], read))  # one host sync per iteration
        finite = not result.grads or read[-1] == 1.0
        # the same verdict on every rank; the gradients are searched only if one is not finite
        self._check_finite(it, stats["loss"], {} if finite else result.grads)
        for name, param in self.meta_params.items():
            param.grad = result.grads.get(name)
        self._last_lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.masker.on_outer_step(it, self.backbone)
        self.iteration = it + 1
        return stats

    def _check_finite(self, it: int, loss: float, grads: Mapping[str, torch.Tensor]) -> None:
        """Raise on a non-finite loss, or name the first non-finite gradient among ``grads``
        (given only when train_step's one host read found one; searching them syncs per tensor)."""
        if math.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values()):
            return
        if math.isfinite(loss):
            bad = next(n for n, g in grads.items() if not torch.isfinite(g).all())
            what = f"meta-gradient of {bad!r} is not finite"
        else:
            what = f"meta-training loss is {loss}"
        raise NonFiniteError(
            f"{what} at iteration {it}; {self.owner.checkpoint_note()}; {self.owner.stop_advice()}"
        )

    def _log_train(self, it: int, stats: Mapping[str, float]) -> None:
        if not self.process.is_main:
            return
        for name, value in stats.items():
            self.logger.scalar(f"train/{name}", value, it)
        self.logger.scalar("train/lr", self._last_lr, it)
        per_layer, overall = mask_sparsity(self.masker)
        if per_layer:
            self.logger.scalar("sparsity/overall", overall, it)
            for name, value in per_layer.items():
                self.logger.scalar(f"sparsity/{name}", value, it)
        for name, value in self.masker.log_scalars().items():
            self.logger.scalar(f"masker/{name}", float(value), it)

    def _log_start(self) -> None:
        """Iteration 0 of a fresh run: the initial scores' histograms, sparsity and masks."""
        if isinstance(self.logger, NullLogger):
            return
        for name, score in self.masker.meta_parameters().items():
            self.logger.histogram(f"scores/{name}", score, 0)
        per_layer, overall = mask_sparsity(self.masker)
        if per_layer:
            self.logger.scalar("sparsity/overall", overall, 0)
        if self.train_config.mask_image_every:
            self._log_mask_picture(0)

    def _val_seed(self, iteration: int) -> int:
        return self.seed * 1_000_003 + iteration

    # ---------------------------------------------------------------- evaluation
    def evaluate(
        self,
        split: str,
        episodes: int,
        seed: int | None = None,
        dataset: FewShotDataset | None = None,
        progress: bool = False,
    ) -> Accuracy:
        """Mean query accuracy (and every metric) after test-time adaptation on ``episodes``
        seeded episodes.

        Under torchrun every rank must call it: each evaluates its share of every chunk, and
        the per-episode results are gathered in order, so all ranks return the one-process value.
        """
        dataset = dataset or self.datasets[split]
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        masks = self.engine.frozen_masks()
        rows: list[tuple[int, list[float]]] = []  # (episode index, [loss, *metrics])
        names: list[str] = []
        done = 0
        show = progress and self.process.is_main
        with Progress(episodes, f"meta-test {split}", enabled=show) as bar:
            while done < episodes:
                chunk = self.sampler.sample_many(
                    dataset, generator, min(EVAL_CHUNK, episodes - done)
                )
                for i in self.process.share(len(chunk)):
                    loss, metrics = self.engine.evaluate(chunk[i], masks)
                    names = names or list(metrics)
                    rows.append((done + i, [loss.item(), *(metrics[n].item() for n in names)]))
                done += len(chunk)
                bar.update(done)
        names = self.process.broadcast(names)  # rank 0 evaluated at least one episode
        table = torch.zeros(episodes, 1 + len(names), dtype=torch.float64)
        for i, values in rows:
            table[i] = torch.tensor(values, dtype=torch.float64)
        losses, *columns = self.process.reduce(table).T.tolist()
        metrics = dict(zip(names, columns))
        return Accuracy.from_episodes(metrics["accuracy"], losses, metrics)

    def test(self, episodes: int | None = None, *, write_results: bool = True) -> dict[str, Any]:
        """Meta-test on the fixed, seeded test episodes (:func:`fewmask.training.evaluation
        .meta_test`); writes the run folder's results (unless ``write_results`` is false:
        ``fewmask test`` writes them beside, never over them). Returns the ``results.json``
        form."""
        results = meta_test(self, episodes).to_dict()
        if write_results and self.owner.writes:
            self.run.write_results(results)
        return results

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "seed": self.seed,
            "config": self.config,
            "train": converter.unstructure(self.train_config),
            "backbone": self.backbone.state_dict(),
            "masker": self.masker.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint). If its ``train.iterations`` differs from this
        Trainer's, the learning-rate schedule is re-planned for the new length (``replanned``
        says how), or refused when the objective's scheduler cannot re-plan."""
        self.iteration = int(state["iteration"])
        self.backbone.load_state_dict(state["backbone"])
        self.masker.load_state_dict(state["masker"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_scheduler(state)
        self.replanned = self._replan(state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._sync_ranks()  # e.g. rank 0's own GPU stream continues on every rank's GPU

    def _load_scheduler(self, state: Mapping[str, Any]) -> None:
        """The scheduler's saved state; a checkpoint from before it was saved continues the
        schedule from its iteration (the built-in schedules are functions of the iteration)."""
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
            return
        self.scheduler.last_epoch = self.iteration - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": restoring
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def _replan(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        """How the schedule's plan changed since ``state`` was saved (``train.iterations``, the
        outer lr), or None if it did not; a scheduler that cannot re-plan refuses the change."""
        before = {
            "train.iterations": (state.get("train") or {}).get("iterations"),
            "objective.options.lr": _outer_lr(state.get("config")),
        }
        after = {
            "train.iterations": self.train_config.iterations,
            "objective.options.lr": _outer_lr(self.config),
        }
        changed = [k for k in before if None not in (before[k], after[k]) and before[k] != after[k]]
        if not changed:
            return None
        if not getattr(self.scheduler, "replannable", False):
            raise ConfigError(
                [
                    f"$.{key}: {before[key]} -> {after[key]}: the objective's learning-rate "
                    f"scheduler ({type(self.scheduler).__name__}) cannot be re-planned; resume "
                    "without changing it"
                    for key in changed
                ]
            )
        end = [before["train.iterations"], after["train.iterations"]]
        return {"end": end, "lr": self.scheduler.get_last_lr()[0], "changed": changed}

    def _sync_ranks(self) -> None:
        """Under torchrun: every rank continues from rank 0's model, seed and random streams
        (the same seed gives the same ones anyway; this makes it so whatever the caller did)."""
        if self.process.world_size == 1:
            return
        tensors = [*self.backbone.state_dict().values(), *self.masker.state_dict().values()]
        self.process.broadcast_tensors(t for t in tensors if isinstance(t, torch.Tensor))
        cuda = self.device.type == "cuda"
        self.seed, generator, cpu_rng, cuda_rng = self.process.broadcast(
            (
                self.seed,
                self.generator.get_state(),
                torch.get_rng_state(),
                torch.cuda.get_rng_state(self.device) if cuda else None,
            )
        )
        self.generator.set_state(generator)
        torch.set_rng_state(cpu_rng)
        if cuda:
            torch.cuda.set_rng_state(cuda_rng, self.device)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the checkpoint atomically (default: the run folder's ``checkpoint.pt``, the one
        it replaces kept as ``checkpoint.prev.pt``).

        Only a finite state is written: a NaN or Inf in the weights, scores or optimizer state
        raises NonFiniteError and leaves the last checkpoint as it is. Under torchrun every rank
        calls it and returns once rank 0 (all ranks hold the same state) has written the file.
        """
        target = Path(path) if path else self._require_run().checkpoint
        if self.process.is_main:
            state = self.state_dict()
            learned = {  # the masker's buffers may hold infinities by design (a threshold)
                "backbone": state["backbone"],
                "masker": dict(self.masker.named_parameters()),
                "optimizer": state["optimizer"],
            }
            bad = first_non_finite(learned)
            if bad is not None:
                raise NonFiniteError(
                    f"not writing the checkpoint of iteration {self.iteration}: {bad} is not "
                    f"finite; the last checkpoint ({target}) is kept"
                )
            if path:
                save_checkpoint(state, target)
            else:
                self._require_run().save_checkpoint(state)
        self.process.barrier()
        return target

    def resume(self, path: str | Path | None = None) -> None:
        """Load a checkpoint (default: the run folder's ``checkpoint.pt``, or
        ``checkpoint.prev.pt`` with a warning if that one fails verification) and continue.

        The checkpoint must come from a Trainer built alike; to rebuild one from the config a
        checkpoint holds, use :func:`fewmask.factory.build_run_trainer`."""
        if path:
            self.load_state_dict(load_checkpoint(path))  # on the CPU; load_state_dict moves it
            discard_partial_writes(path)  # what a crash during a checkpoint write left behind
            return
        run = self._require_run()
        self.load_state_dict(run.verified_checkpoint())
        run.discard_partial_checkpoints()

    @property
    def run(self) -> RunFolder | None:
        """The run folder's files (None: the Trainer writes nothing)."""
        return self.owner.folder

    @property
    def run_dir(self) -> Path | None:
        """The run folder's path (None: the Trainer writes nothing)."""
        return self.run.path if self.run is not None else None

    def _require_run(self) -> RunFolder:
        if self.run is None:
            raise ConfigError(["$.run_dir: this Trainer has no run directory"])
        return self.run

    def _open_logger(self) -> None:
        if not self.owner.writes:
            return
        self.run.create()
        # drop whatever an earlier process logged after the point this one starts from
        self.logger = RunLogger(self.run, resume_step=self.iteration + 1 if self.iteration else 0)
        text = run_config_text(self.config, self.train_config, self.threads)
        self.logger.text("config", text, self.iteration)  # a resumed run: its config from here

    def _log_mask_picture(self, iteration: int) -> None:
        """The masks of ``train.mask_image_layers`` (default: every masked layer), unit by unit
        in the input's shape (masking runs)."""
        if isinstance(self.logger, NullLogger):
            return
        masks = self.engine.frozen_masks()
        for name in self.train_config.mask_image_layers or masks:
            image = mask_grid(masks[name].cpu(), self.datasets["train"].image_shape)
            self.logger.image(f"masks/{name}", image, iteration)

    def _check_mask_image_layers(self) -> None:
        unknown = [n for n in self.train_config.mask_image_layers if n not in self.masker.masks()]
        if unknown:
            masked = ", ".join(self.masker.masks()) or "none (the masker masks nothing)"
            raise ConfigError(
                [f"$.train.mask_image_layers: {', '.join(unknown)} not masked; masked: {masked}"]
            )

    def _log_results(self, results: Mapping[str, Any]) -> None:
        """The meta-test as scalars and, with the hyperparameters, in TensorBoard's HParams."""
        metrics = {f"test/{k}": results[k] for k in ("accuracy", "ci95", "loss", "sparsity")}
        for tag, value in metrics.items():
            self.logger.scalar(tag, value, self.iteration)
        for name, value in results.get("sparsity_layers", {}).items():
            self.logger.scalar(f"test/sparsity/{name}", value, self.iteration)
        self.logger.hparams(run_hparams(self.config, self.train_config, self.threads), metrics)


def _outer_lr(config: Any) -> Any:
    """The outer learning rate a stored config names (``objective.options.lr``), if any."""
    if not isinstance(config, Mapping):
        return None
    options = (config.get("objective") or {}).get("options")
    return options.get("lr") if isinstance(options, Mapping) else None
