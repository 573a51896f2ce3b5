"""Test helpers for fewmask and its plugins; opt in with ``pytest_plugins = ["fewmask.testing"]``.

fewmask's own suite loads it with ``-p fewmask.testing``. Fixtures: ``tiny_dataset`` (random
uint8 images, 8 classes x 6), ``registry`` (a fresh registry, strict plugin loading).
"""

from __future__ import annotations

import pytest
import torch

from fewmask.interfaces import FewShotDataset
from fewmask.plugins import load_registry
from fewmask.registry import Registry


def make_dataset(
    classes: int = 8,
    per_class: int = 6,
    shape: tuple[int, ...] = (1, 28, 28),
    seed: int = 0,
    name: str = "tiny",
) -> FewShotDataset:
    """Random uint8 images, ``per_class`` per class, sorted by class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (classes * per_class, *shape), generator=generator, dtype=torch.uint8
    )
    labels = torch.arange(classes).repeat_interleave(per_class)
    return FewShotDataset(images, labels, tuple(f"c{i}" for i in range(classes)), name)


@pytest.fixture
def tiny_dataset() -> FewShotDataset:
    return make_dataset()


@pytest.fixture
def registry() -> Registry:
    return load_registry(strict=True)


@pytest.fixture(autouse=True)
def _fresh_seed_and_registry():
    """Every test starts from torch seed 0 and a registry that is reloaded on first use."""
    from fewmask.plugins import reset_default_registry

    torch.manual_seed(0)
    reset_default_registry()
    yield
    reset_default_registry()


def _hypothesis_profiles() -> None:
    import os

    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is a test extra
        return
    settings.register_profile(
        "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("thorough", max_examples=300, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_hypothesis_profiles()
