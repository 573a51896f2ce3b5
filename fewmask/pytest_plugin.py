"""pytest fixtures for fewmask and its plugins; opt in with
``pytest_plugins = ["fewmask.pytest_plugin"]`` (fewmask's own suite uses ``-p``).

Fixtures: ``tiny_dataset`` (random uint8 images, 8 classes x 6), ``registry`` (a fresh registry,
strict plugin loading). Every test starts from torch seed 0 on one thread. Hypothesis profiles:
``ci`` (default) and ``thorough``, chosen by ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import os

import pytest
import torch

from fewmask.interfaces import FewShotDataset
from fewmask.registry import Registry
from fewmask.session import load_registry
from fewmask.testing import make_dataset


@pytest.fixture
def tiny_dataset() -> FewShotDataset:
    return make_dataset()


@pytest.fixture
def registry() -> Registry:
    return load_registry(strict=True)


@pytest.fixture(autouse=True)
def _fresh_seed_and_registry():
    """Every test starts from torch seed 0, one thread (tiny nets run faster on one, and the
    project's 2-core machines are shared), and a registry that is reloaded on first use."""
    from fewmask.session import reset_default_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reset_default_registry()
    yield
    reset_default_registry()
    torch.set_num_threads(threads)


def _hypothesis_profiles() -> None:

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
