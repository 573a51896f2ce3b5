"""Small statistics: accuracy with a 95% confidence interval, mask sparsity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import torch

from fewmask.interfaces import Masker


@attrs.frozen
class Accuracy:
    """Mean query accuracy over episodes, with the 95% confidence interval half-width;
    ``metrics`` holds the mean of every metric of the objective, accuracy included."""

    mean: float
    ci95: float
    episodes: int
    loss: float
    metrics: dict[str, float] = attrs.field(factory=dict)

    @classmethod
    def from_episodes(
        cls,
        accuracies: Sequence[float],
        losses: Sequence[float],
        metrics: Mapping[str, Sequence[float]] | None = None,
    ) -> Accuracy:
        """From per-episode values (``metrics``: per-episode values of every metric)."""
        values = torch.tensor(accuracies, dtype=torch.float64)
        n = len(values)
        std = values.std(unbiased=True).item() if n > 1 else 0.0
        means = {
            k: torch.tensor(v, dtype=torch.float64).mean().item()
            for k, v in (metrics or {}).items()
        }
        return cls(
            values.mean().item(), 1.96 * std / math.sqrt(n), n, float(sum(losses) / n), means
        )

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f} % ({self.episodes} episodes)"


def mask_sparsity(masker: Masker) -> tuple[dict[str, float], float]:
    """Fraction of pruned entries per masked parameter, and over all of them."""
    with torch.no_grad():
        masks = masker.masks()
        per_layer = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
        total = sum(m.numel() for m in masks.values())
        pruned = sum((m == 0).sum().item() for m in masks.values())
    return per_layer, (pruned / total if total else 0.0)
