"""Meta-testing: one function, one typed result, for the Trainer, ``fewmask test`` and the
experiments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from fewmask.interfaces import FewShotDataset
from fewmask.training.metrics import mask_sparsity


@attrs.frozen
class DomainResult:
    """Accuracy on one more test set (cross-domain)."""

    accuracy: float
    ci95: float
    episodes: int


@attrs.frozen
class MetaTestResult:
    """The meta-test of a model at ``iteration``: mean query accuracy after test-time adaptation
    on ``episodes`` fixed, seeded episodes of ``split``, with its 95% confidence interval."""

    split: str
    iteration: int
    accuracy: float
    ci95: float
    loss: float
    episodes: int
    sparsity: float
    sparsity_layers: Mapping[str, float]  # the final masks' sparsity per layer
    ways: int
    shots: int
    queries: int
    seed: int
    threads: int | None = None
    dataset: str | None = None  # another dataset's test split (``fewmask test --dataset``)
    cross_domain: Mapping[str, DomainResult] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` form (fields that are not set are left out)."""
        data = attrs.asdict(self, recurse=True)
        if self.dataset is None:
            del data["dataset"]
        if not self.cross_domain:
            del data["cross_domain"]
        return data


def meta_test(
    trainer: Any,
    episodes: int | None = None,
    *,
    dataset: FewShotDataset | None = None,
    cross_domain: bool = True,
) -> MetaTestResult:
    """Meta-test ``trainer``'s model (a :class:`~fewmask.training.trainer.Trainer`) on its
    test split (or ``dataset``'s test split), and on its cross-domain sets unless
    ``cross_domain`` is false. Every rank must call it under torchrun."""
    episodes = episodes or trainer.train_config.test_episodes
    progress = trainer.train_config.progress
    if dataset is not None:
        split = "test"
        result = trainer.evaluate(split, episodes, dataset=dataset, progress=progress)
    else:
        split = "test" if "test" in trainer.datasets else "train"
        result = trainer.evaluate(split, episodes, progress=progress)
    others = {}
    if cross_domain and dataset is None:
        for label, other in trainer.cross_domain.items():
            measured = trainer.evaluate(label, episodes, dataset=other, progress=progress)
            others[label] = DomainResult(measured.mean, measured.ci95, measured.episodes)
    per_layer, sparsity = mask_sparsity(trainer.masker)
    threads = trainer.threads.threads if trainer.threads is not None else None
    return MetaTestResult(
        split=split,
        iteration=trainer.iteration,
        accuracy=result.mean,
        ci95=result.ci95,
        loss=result.loss,
        episodes=result.episodes,
        sparsity=sparsity,
        sparsity_layers=per_layer,
        ways=trainer.sampler.ways,
        shots=trainer.sampler.shots,
        queries=trainer.sampler.queries,
        seed=trainer.seed,
        threads=threads,
        dataset=dataset.name if dataset is not None else None,
        cross_domain=others,
    )
