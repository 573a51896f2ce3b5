"""The ``episodic`` sampler: N-way K-shot Q-query episodes from in-memory uint8 tensors."""

from __future__ import annotations

import attrs
import torch

from fewmask.config import option
from fewmask.errors import DatasetError
from fewmask.interfaces import Episode, EpisodeSampler, FewShotDataset


@attrs.frozen
class EpisodicConfig:
    """Options of ``episodic``."""

    ways: int = option(5, ge=2, help="classes per episode (N); also the head's width")
    shots: int = option(1, ge=1, help="support images per class (K)")
    queries: int | None = option(
        None, ge=1, help="query images per class (default: shots, as the Meta-ticket code does)"
    )


class EpisodicSampler(EpisodeSampler):
    """Draws classes, then images per class, with one explicit ``torch.Generator``.

    Classes are drawn without replacement and labelled by their draw order (a random labelling);
    each class contributes ``shots`` support and ``queries`` query images, all distinct.
    Images are returned as floats in [0, 1].
    """

    def __init__(self, config: EpisodicConfig):
        self.config = config
        self.ways = config.ways
        self.shots = config.shots
        self.queries = config.queries or config.shots
        self._cache: tuple[int, torch.Tensor, torch.Tensor, int] | None = None

    def check(self, dataset: FewShotDataset) -> None:
        need = self.shots + self.queries
        if dataset.num_classes < self.ways:
            raise DatasetError(
                f"{dataset.name}: {self.ways}-way episodes need at least {self.ways} classes, "
                f"the split has {dataset.num_classes}"
            )
        counts = dataset.class_counts
        small = (counts < need).nonzero().flatten().tolist()
        if small:
            names = ", ".join(f"{dataset.class_names[i]} ({counts[i]})" for i in small[:5])
            raise DatasetError(
                f"{dataset.name}: {len(small)} class(es) have fewer than shots + queries = {need} "
                f"images: {names}{' ...' if len(small) > 5 else ''}"
            )

    def _index(self, dataset: FewShotDataset) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self._cache is None or self._cache[0] != id(dataset):
            counts = dataset.class_counts
            offsets = torch.cumsum(counts, 0) - counts
            self._cache = (id(dataset), counts, offsets, int(counts.max()))
        return self._cache[1], self._cache[2], self._cache[3]

    def sample(self, dataset: FewShotDataset, generator: torch.Generator) -> Episode:
        counts, offsets, widest = self._index(dataset)
        ways, shots, need = self.ways, self.shots, self.shots + self.queries
        classes = torch.randperm(dataset.num_classes, generator=generator)[:ways]
        keys = torch.rand(ways, widest, generator=generator)
        keys.masked_fill_(torch.arange(widest) >= counts[classes, None], 2.0)
        picks = keys.argsort(dim=1)[:, :need] + offsets[classes, None]
        images = dataset.images[picks].float().div_(255.0)  # [ways, need, C, H, W]
        labels = torch.arange(ways)
        return Episode(
            images[:, :shots].flatten(0, 1),
            labels.repeat_interleave(shots),
            images[:, shots:].flatten(0, 1),
            labels.repeat_interleave(need - shots),
        )
