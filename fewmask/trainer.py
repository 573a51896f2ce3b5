"""The Trainer: meta-training, validation, meta-test and checkpoints, read top to bottom.

Compose it from Python objects::

    trainer = Trainer(backbone, masker, inner, objective, sampler, datasets, TrainConfig(...))
    trainer.fit()

or from a config with :func:`fewmask.factory.build_trainer`. The Trainer attaches the masker to
the backbone, so pass a fresh (unattached) masker.

The Trainer is the loop, its logging and its checkpoints. With ``run_dir`` it writes its files
through a :class:`fewmask.run.RunFolder`; the checkpoint holds the config it was built from, so
:func:`fewmask.factory.build_run_trainer` rebuilds and resumes a run from the checkpoint alone.
Allocator tuning and resizing the cross-domain sets happen where a run is built (the factory).

Under ``torchrun`` the Trainer joins the process group and splits each meta-batch's tasks across
the ranks (:mod:`fewmask.engine.distributed`); rank 0 alone logs, prints and writes files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from fewmask.checkpoint import discard_partial_writes, load_checkpoint, save_checkpoint
from fewmask.checks import check_backbone_fits, check_train_config
from fewmask.config import TrainConfig
from fewmask.engine import Engine, EngineOptions, distributed
from fewmask.engine.batched import batching_pays
from fewmask.engine.graphs import GraphedMetaStep
from fewmask.errors import ConfigError, DatasetError, NonFiniteError
from fewmask.finite import check_meta_parameters, first_non_finite
from fewmask.interfaces import (
    Backbone,
    Episode,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Masker,
    MetaObjective,
)
from fewmask.loggers import MetricLogger, NullLogger, RunLogger, run_config_text, run_hparams
from fewmask.metrics import Accuracy, mask_sparsity
from fewmask.options import converter
from fewmask.pictures import mask_grid
from fewmask.progress import Progress
from fewmask.run import RunFolder
from fewmask.threads import apply_threads

ENGINE_OPTIONS = {
    "exact": EngineOptions,
    "fast": EngineOptions.fast,
    "batched": EngineOptions.batched_path,
}
"""``train.engine`` -> the :class:`EngineOptions` it selects (``auto``: :func:`engine_options`)."""


def engine_options(name: str, backbone: Backbone, inner: InnerOptimizer) -> EngineOptions:
    """The options ``train.engine: name`` selects; ``auto`` is ``batched`` where the batched
    path applies and was measured faster (:func:`~fewmask.engine.batched.batching_pays`), else
    ``exact``; it has no fallback to announce."""
    if name == "auto":
        return EngineOptions.batched_path() if batching_pays(backbone, inner) else EngineOptions()
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
        run_dir: str | Path | RunFolder | None = None,
        config: Any = None,
        cross_domain: Mapping[str, FewShotDataset] | None = None,
    ):
        self.train_config = train = train or TrainConfig()
        check_train_config(train)  # e.g. iterations=0 from Python
        self.device = distributed.setup(train.device)  # cuda:LOCAL_RANK under torchrun
        self.dtype = getattr(torch, train.dtype)
        self.backbone, self.masker, self.inner = backbone, masker, inner
        self.objective, self.sampler, self.datasets = objective, sampler, dict(datasets)
        self.seed = seed
        self.run = RunFolder(run_dir) if run_dir is not None else None  # None: write nothing
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
                    "(fewmask.transforms.match_shape)"
                )
            sampler.check(dataset)
        check_backbone_fits(backbone, shape, getattr(sampler, "ways", None))
        # process-wide; recorded in the results and the TensorBoard config
        self.threads = apply_threads(train.threads, backbone, shape, sampler, self.device)
        masker.attach(backbone)
        backbone.to(self.device, self.dtype)
        masker.to(self.device, self.dtype)
        if train.data_on_device:  # episodes cut out where the model runs; the same draws
            self.datasets = {k: d.to(self.device) for k, d in self.datasets.items()}
            self.cross_domain = {k: d.to(self.device) for k, d in self.cross_domain.items()}
        options = engine_options(train.engine, backbone, inner)
        self.engine = Engine(backbone, masker, inner, objective, options)
        self.meta_params = self.engine.meta_params
        self._meta_step = self.engine.meta_step
        if train.cuda_graph:
            if distributed.world_size() > 1:
                raise ConfigError(["$.train.cuda_graph: not under torchrun (the step all-reduces)"])
            self._meta_step = GraphedMetaStep(self.engine)
        if not self.meta_params:
            raise ConfigError(["$.objective: it selected no meta-parameters to learn"])
        self.optimizer = objective.build_optimizer(list(self.meta_params.values()))
        self.scheduler = objective.build_scheduler(self.optimizer, train.iterations)
        self._last_lr = self.scheduler.get_last_lr()[0]  # the rate of the last update, logged
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.logger: MetricLogger = NullLogger()
        self._sync_ranks()

    # ---------------------------------------------------------------- meta-training
    def fit(self, *, callbacks: Sequence[Callable[[Trainer], None]] = ()) -> dict[str, Any]:
        """Meta-train to ``train.iterations``, then meta-test; returns the results dict.

        Each of ``callbacks`` is called with the Trainer once after every iteration (after its
        scalars are logged, before its validation and checkpoint), on every rank under
        torchrun; ``trainer.iteration`` counts the iterations done, and ``trainer.logger``
        writes to this run's logs. A resumed run calls them from the next iteration on.

        With a run folder, this process holds its lock meanwhile (another process writing the
        same folder is a RunLockedError); a non-finite value stops the run with NonFiniteError
        and is recorded in the folder's ``stopped.json``."""
        cfg = self.train_config
        hold = ExitStack()
        if self.run is not None and distributed.is_main():
            hold.enter_context(self.run.locked())
            self.run.clear_stopped()
        warned = False
        try:
            self._open_logger()
            show = cfg.progress and distributed.is_main()
            with Progress(cfg.iterations, "meta-train", self.iteration, show) as bar:
                while self.iteration < cfg.iterations:
                    stats = self.train_step()
                    it = self.iteration  # iterations done
                    if it % cfg.log_every == 0 or it == cfg.iterations:
                        self._log_train(it, stats)
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
                    due = it % cfg.checkpoint_every == 0 or it == cfg.iterations
                    if due and self.run_dir is not None:
                        self.logger.flush()  # metrics up to the checkpoint survive a crash
                        self.save()
                    bar.update(it, " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
            results = self.test()
            self._log_results(results)
        except NonFiniteError as exc:
            if self.run is not None and distributed.is_main():
                self.run.write_stopped(self.iteration, str(exc))
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
        kept = f"the last good checkpoint is kept{f' in {self.run_dir}' if self.run_dir else ''}"
        if not math.isfinite(loss):
            raise NonFiniteError(f"meta-training loss is {loss} at iteration {it}; {kept}")
        for name, grad in grads.items():
            if not torch.isfinite(grad).all():
                raise NonFiniteError(
                    f"meta-gradient of {name!r} is not finite at iteration {it}; {kept}"
                )

    def _log_train(self, it: int, stats: Mapping[str, float]) -> None:
        if not distributed.is_main():
            return
        for name, value in stats.items():
            self.logger.scalar(f"train/{name}", value, it)
        self.logger.scalar("train/lr", self._last_lr, it)
        per_layer, overall = mask_sparsity(self.masker)
        if per_layer:
            self.logger.scalar("sparsity/overall", overall, it)
            for name, value in per_layer.items():
                self.logger.scalar(f"sparsity/{name}", value, it)

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
        show = progress and distributed.is_main()
        with Progress(episodes, f"meta-test {split}", enabled=show) as bar:
            while done < episodes:
                chunk = self.sampler.sample_many(
                    dataset, generator, min(EVAL_CHUNK, episodes - done)
                )
                for i in distributed.share(len(chunk)):
                    loss, metrics = self.engine.evaluate(chunk[i], masks)
                    names = names or list(metrics)
                    rows.append((done + i, [loss.item(), *(metrics[n].item() for n in names)]))
                done += len(chunk)
                bar.update(done)
        names = distributed.broadcast_object(names)  # rank 0 evaluated at least one episode
        table = torch.zeros(episodes, 1 + len(names), dtype=torch.float64)
        for i, values in rows:
            table[i] = torch.tensor(values, dtype=torch.float64)
        losses, *columns = distributed.sum_over_ranks(table).T.tolist()
        metrics = dict(zip(names, columns))
        return Accuracy.from_episodes(metrics["accuracy"], losses, metrics)

    def test(self, episodes: int | None = None, *, write_results: bool = True) -> dict[str, Any]:
        """Meta-test on the fixed, seeded test episodes; writes the run folder's results (unless
        ``write_results`` is false: ``fewmask test`` writes them beside, never over them)."""
        episodes = episodes or self.train_config.test_episodes
        split = "test" if "test" in self.datasets else "train"
        result = self.evaluate(split, episodes, progress=self.train_config.progress)
        _, sparsity = mask_sparsity(self.masker)
        results = {
            "split": split,
            "iteration": self.iteration,
            "accuracy": result.mean,
            "ci95": result.ci95,
            "loss": result.loss,
            "episodes": result.episodes,
            "sparsity": sparsity,
            "ways": self.sampler.ways,
            "shots": self.sampler.shots,
            "queries": self.sampler.queries,
            "seed": self.seed,
            "threads": self.threads.threads,
        }
        if self.cross_domain:
            results["cross_domain"] = {}
        for label, dataset in self.cross_domain.items():
            other = self.evaluate(
                label, episodes, dataset=dataset, progress=self.train_config.progress
            )
            results["cross_domain"][label] = {
                "accuracy": other.mean,
                "ci95": other.ci95,
                "episodes": other.episodes,
            }
        if write_results and self.run is not None and distributed.is_main():
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
        self.iteration = int(state["iteration"])
        self.backbone.load_state_dict(state["backbone"])
        self.masker.load_state_dict(state["masker"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_scheduler(state)
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

    def _sync_ranks(self) -> None:
        """Under torchrun: every rank continues from rank 0's model, seed and random streams
        (the same seed gives the same ones anyway; this makes it so whatever the caller did)."""
        if distributed.world_size() == 1:
            return
        tensors = [*self.backbone.state_dict().values(), *self.masker.state_dict().values()]
        distributed.broadcast_tensors(t for t in tensors if isinstance(t, torch.Tensor))
        cuda = self.device.type == "cuda"
        self.seed, generator, cpu_rng, cuda_rng = distributed.broadcast_object(
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
        if distributed.is_main():
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
        distributed.barrier()
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
    def run_dir(self) -> Path | None:
        """The run folder's path (None: the Trainer writes nothing)."""
        return self.run.path if self.run is not None else None

    def _require_run(self) -> RunFolder:
        if self.run is None:
            raise ConfigError(["$.run_dir: this Trainer has no run directory"])
        return self.run

    def _open_logger(self) -> None:
        if self.run is None or not distributed.is_main():
            return
        self.run.create()
        # drop whatever an earlier process logged after the point this one starts from
        self.logger = RunLogger(self.run, resume_step=self.iteration + 1 if self.iteration else 0)
        text = run_config_text(self.config, self.train_config, self.threads)
        self.logger.text("config", text, self.iteration)  # a resumed run: its config from here

    def _log_mask_picture(self, iteration: int) -> None:
        """The first masked layer's mask, unit by unit in the input's shape (masking runs)."""
        if isinstance(self.logger, NullLogger):
            return
        masks = self.engine.frozen_masks()
        if masks:
            name, mask = next(iter(masks.items()))
            image = mask_grid(mask.cpu(), self.datasets["train"].image_shape)
            self.logger.image(f"masks/{name}", image, iteration)

    def _log_results(self, results: Mapping[str, Any]) -> None:
        """The meta-test as scalars and, with the hyperparameters, in TensorBoard's HParams."""
        metrics = {f"test/{k}": results[k] for k in ("accuracy", "ci95", "loss", "sparsity")}
        for tag, value in metrics.items():
            self.logger.scalar(tag, value, self.iteration)
        self.logger.hparams(run_hparams(self.config, self.train_config, self.threads), metrics)
