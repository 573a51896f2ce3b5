"""The ``episodic`` sampler: N-way K-shot Q-query episodes from in-memory uint8 tensors."""

from __future__ import annotations

import attrs
import torch

from fewmask.errors import DatasetError
from fewmask.interfaces import Episode, EpisodeSampler, FewShotDataset
from fewmask.options import option


@attrs.frozen
class EpisodicConfig:
    """Options of ``episodic``."""

    ways: int = option(5, ge=2, le=10_000, help="classes per episode (N); also the head's width")
    shots: int = option(1, ge=1, le=10_000, help="support images per class (K)")
    queries: int | None = option(
        None,
        ge=1,
        le=10_000,
        help="query images per class (default: shots, as the Meta-ticket code does)",
    )


class EpisodicSampler(EpisodeSampler):
    """Draws classes, then images per class, with one explicit ``torch.Generator``.

    Classes are drawn without replacement and labelled in a random order; each class contributes
    ``shots`` support and ``queries`` query images, all distinct. Many episodes are drawn in one
    vectorised pass (:meth:`sample_many`); images stay uint8 until ``Episode.to`` converts them
    on the training device. The draws use the CPU generator alone; the images are gathered on
    the device that holds the dataset's images (see ``FewShotDataset.to``), so a dataset held
    on a GPU gives the same episodes as on the CPU, cut out there.
    """

    config_class = EpisodicConfig
    description = "N-way K-shot Q-query episodes from in-memory tensors"

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
        return self.sample_many(dataset, generator, 1)[0]

    def sample_many(
        self, dataset: FewShotDataset, generator: torch.Generator, count: int
    ) -> list[Episode]:
        """``count`` episodes drawn in one vectorised pass; images stay uint8."""
        counts, offsets, widest = self._index(dataset)
        ways, need = self.ways, self.shots + self.queries
        # a uniformly random ordered subset of classes: the `ways` largest of iid uniform keys
        classes = torch.rand(count, dataset.num_classes, generator=generator).topk(ways).indices
        keys = torch.rand(count, ways, widest, generator=generator)
        keys.masked_fill_(torch.arange(widest) >= counts[classes].unsqueeze(-1), 2.0)
        picks = keys.topk(need, largest=False).indices + offsets[classes].unsqueeze(-1)
        return self._gather(dataset.images, picks, count)

    def _gather(self, images: torch.Tensor, picks: torch.Tensor, count: int) -> list[Episode]:
        """Cut the episodes out of ``images`` where they are (a GPU, after
        ``FewShotDataset.to``); ``picks`` are drawn on the CPU and copied there, without waiting
        for the GPU."""
        ways, shots, need = self.ways, self.shots, self.shots + self.queries
        device = images.device
        picks = picks.to(device, non_blocking=True)
        # index_select is several times faster than advanced indexing for uint8 gathers
        support = images.index_select(0, picks[:, :, :shots].flatten())
        query = images.index_select(0, picks[:, :, shots:].flatten())
        support = support.view(count, ways * shots, *images.shape[1:])
        query = query.view(count, ways * (need - shots), *images.shape[1:])
        labels = torch.arange(ways)
        support_y = labels.repeat_interleave(shots).to(device, non_blocking=True)
        query_y = labels.repeat_interleave(need - shots).to(device, non_blocking=True)
        return [Episode(support[i], support_y, query[i], query_y) for i in range(count)]
