"""The Trainer: meta-training, validation, meta-test and checkpoints, read top to bottom.

Compose it from Python objects::

    trainer = Trainer(backbone, masker, inner, objective, sampler, datasets, TrainConfig(...))
    trainer.fit()

or from a config with :func:`fewmask.factory.build_trainer`. The Trainer attaches the masker to
the backbone, so pass a fresh (unattached) masker.

Under ``torchrun`` the Trainer joins the process group and splits each meta-batch's tasks across
the ranks (:mod:`fewmask.distributed`); rank 0 alone logs, prints and writes files.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fewmask import distributed
from fewmask.checkpoint import load_checkpoint, save_checkpoint
from fewmask.config import TrainConfig, converter
from fewmask.engine import EngineOptions, evaluate_episode, frozen_masks, meta_gradient
from fewmask.errors import ConfigError, DatasetError, NonFiniteError
from fewmask.interfaces import (
    Backbone,
    EpisodeSampler,
    FewShotDataset,
    InnerOptimizer,
    Masker,
    MetaObjective,
)
from fewmask.loggers import MetricLogger, NullLogger, RunLogger
from fewmask.malloc import tune_glibc_malloc
from fewmask.metrics import Accuracy, mask_sparsity
from fewmask.progress import Progress
from fewmask.transforms import match_shape

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
RUN_CONFIG = "config.yaml"  # the resolved config, written by the CLI and by experiments
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
        run_dir: str | Path | None = None,
        config: Any = None,
        cross_domain: Mapping[str, FewShotDataset] | None = None,
    ):
        self.train_config = train = train or TrainConfig()
        self.engine_options = EngineOptions.fast() if train.engine == "fast" else None
        if train.tune_malloc and not tune_glibc_malloc():
            warnings.warn(
                "train.tune_malloc: not a glibc system; the allocator is unchanged", stacklevel=2
            )
        self.device = distributed.setup(train.device)  # cuda:LOCAL_RANK under torchrun
        self.dtype = getattr(torch, train.dtype)
        self.backbone, self.masker, self.inner = backbone, masker, inner
        self.objective, self.sampler, self.datasets = objective, sampler, dict(datasets)
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config  # plain data of the experiment config, stored in checkpoints

        self.cross_domain = dict(cross_domain or {})
        if "train" not in self.datasets:
            raise ConfigError(["$.dataset: the datasets need a 'train' split"])
        shape = self.datasets["train"].image_shape
        for split, dataset in self.datasets.items():
            if dataset.image_shape != shape:
                raise DatasetError(
                    f"{dataset.name}: split '{split}' has images of shape {dataset.image_shape}, "
                    f"but the train split has {shape}; resize them to match"
                )
            sampler.check(dataset)
        for label, dataset in self.cross_domain.items():
            self.cross_domain[label] = match_shape(dataset, shape)
            sampler.check(self.cross_domain[label])
        masker.attach(backbone)
        backbone.to(self.device, self.dtype)
        masker.to(self.device, self.dtype)
        self.meta_params = objective.meta_parameters(backbone, masker)
        if not self.meta_params:
            raise ConfigError(["$.objective: it selected no meta-parameters to learn"])
        self.optimizer = objective.build_optimizer(list(self.meta_params.values()))
        self.learning_rates = inner.learning_rates(backbone)
        self.generator = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self._last_lr = self.objective.learning_rate(0, train.iterations)
        self.logger: MetricLogger = NullLogger()
        self._sync_ranks()

    # ---------------------------------------------------------------- meta-training
    def fit(self) -> dict[str, Any]:
        """Meta-train to ``train.iterations``, then meta-test; returns the results dict."""
        cfg = self.train_config
        self._open_logger()
        try:
            show = cfg.progress and distributed.is_main()
            with Progress(cfg.iterations, "meta-train", self.iteration, show) as bar:
                while self.iteration < cfg.iterations:
                    loss, accuracy = self.train_step()
                    it = self.iteration  # iterations done
                    if it % cfg.log_every == 0 or it == cfg.iterations:
                        self._log_train(it, loss, accuracy)
                    if it % cfg.histogram_every == 0:
                        for name, score in self.masker.meta_parameters().items():
                            self.logger.histogram(f"scores/{name}", score, it)
                    if cfg.val_episodes and it % cfg.val_every == 0 and "val" in self.datasets:
                        val = self.evaluate("val", cfg.val_episodes, seed=self._val_seed(it))
                        self.logger.scalar("val/accuracy", val.mean, it)
                        self.logger.scalar("val/loss", val.loss, it)
                    due = it % cfg.checkpoint_every == 0 or it == cfg.iterations
                    if due and self.run_dir is not None:
                        self.logger.flush()  # metrics up to the checkpoint survive a crash
                        self.save()
                    bar.update(it, f"loss {loss:.3f} acc {accuracy:.3f}")
            results = self.test()
        finally:
            self.logger.close()
            self.logger = NullLogger()
        return results

    def train_step(self) -> tuple[float, float]:
        """One outer iteration: lr for this iteration, B tasks, meta-gradient, update.

        Every rank draws all B tasks (so the episode stream is the same everywhere) and
        differentiates its share; the reduced gradient is the mean over all B tasks.
        """
        it, cfg = self.iteration, self.train_config
        lr = self.objective.learning_rate(it, cfg.iterations)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        batch = self.sampler.sample_many(
            self.datasets["train"], self.generator, cfg.meta_batch_size
        )
        mine = [batch[i].to(self.device, self.dtype) for i in distributed.share(len(batch))]
        loss = accuracy = 0.0
        if mine:  # a rank may have no task when B < world size
            with distributed.isolated_rng(self.device):
                stats = meta_gradient(
                    self.backbone,
                    self.masker,
                    self.inner,
                    self.meta_params,
                    mine,
                    self.learning_rates,
                    self.engine_options,
                )
            loss, accuracy = stats.loss, stats.accuracy
        loss, accuracy = distributed.reduce_meta_gradients(
            self.meta_params.values(), loss, accuracy, len(mine), len(batch)
        )
        self._check_finite(it, loss)  # the same verdict on every rank
        self.optimizer.step()
        self.masker.on_outer_step(it, self.backbone)
        self.iteration = it + 1
        self._last_lr = lr
        return loss, accuracy

    def _check_finite(self, it: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"meta-training loss is {loss} at iteration {it}; the last good checkpoint "
                f"is kept{f' in {self.run_dir}' if self.run_dir else ''}"
            )
        grads = [p.grad for p in self.meta_params.values() if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return  # one device sync per iteration; find the culprit only when something is off
        for name, param in self.meta_params.items():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise NonFiniteError(
                    f"meta-gradient of {name!r} is not finite at iteration {it}; the last good "
                    f"checkpoint is kept{f' in {self.run_dir}' if self.run_dir else ''}"
                )

    def _log_train(self, it: int, loss: float, accuracy: float) -> None:
        if not distributed.is_main():
            return
        self.logger.scalar("train/loss", loss, it)
        self.logger.scalar("train/accuracy", accuracy, it)
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
        """Mean query accuracy after ``inner.test_steps`` on ``episodes`` seeded episodes.

        Under torchrun every rank must call it: each evaluates its share of every chunk, and
        the per-episode results are gathered in order, so all ranks return the one-process value.
        """
        dataset = dataset or self.datasets[split]
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        masks = frozen_masks(self.masker)
        rows = torch.zeros(episodes, 2, dtype=torch.float64)  # (loss, accuracy) per episode
        done = 0
        show = progress and distributed.is_main()
        with Progress(episodes, f"meta-test {split}", enabled=show) as bar:
            while done < episodes:
                chunk = self.sampler.sample_many(
                    dataset, generator, min(EVAL_CHUNK, episodes - done)
                )
                for i in distributed.share(len(chunk)):
                    rows[done + i] = torch.tensor(
                        evaluate_episode(
                            self.backbone,
                            masks,
                            self.inner,
                            chunk[i].to(self.device, self.dtype),
                            self.learning_rates,
                        ),
                        dtype=torch.float64,
                    )
                done += len(chunk)
                bar.update(done)
        losses, accuracies = distributed.sum_over_ranks(rows).T.tolist()
        return Accuracy.from_episodes(accuracies, losses)

    def test(self, episodes: int | None = None) -> dict[str, Any]:
        """Meta-test on the fixed, seeded test episodes; writes ``results.json`` in the run dir."""
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
        if self.run_dir is not None and distributed.is_main():
            (self.run_dir / RESULTS).write_text(json.dumps(results, indent=2) + "\n")
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
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.backbone.load_state_dict(state["backbone"])
        self.masker.load_state_dict(state["masker"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._sync_ranks()  # e.g. rank 0's own GPU stream continues on every rank's GPU

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
        """Write the checkpoint atomically (default: ``RUN_DIR/checkpoint.pt``).

        Under torchrun every rank calls it and returns once rank 0 (all ranks hold the same
        state) has written the file.
        """
        target = Path(path) if path else self._require_run_dir() / CHECKPOINT
        if distributed.is_main():
            save_checkpoint(self.state_dict(), target)
        distributed.barrier()
        return target

    def resume(self, path: str | Path | None = None) -> None:
        """Load a checkpoint (default: ``RUN_DIR/checkpoint.pt``) and continue from it."""
        source = Path(path) if path else self._require_run_dir() / CHECKPOINT
        self.load_state_dict(load_checkpoint(source, map_location=self.device))
        for stale in source.parent.glob(f".{source.name}.*.tmp"):  # a write cut short by a crash
            stale.unlink()

    def _require_run_dir(self) -> Path:
        if self.run_dir is None:
            raise ConfigError(["$.run_dir: this Trainer has no run directory"])
        return self.run_dir

    def _open_logger(self) -> None:
        if self.run_dir is None or not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # drop whatever an earlier process logged after the point this one starts from
        self.logger = RunLogger(
            self.run_dir, resume_step=self.iteration + 1 if self.iteration else 0
        )
