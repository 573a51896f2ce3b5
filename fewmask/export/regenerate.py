"""The initial network of a run, drawn again from its config and seed, without its data.

:func:`fewmask.factory.build_trainer` seeds the global generator with the experiment's seed,
builds the sampler, masker, inner optimizer and objective (none draws), reads the data (no
draw), builds the backbone (its initialisation draws), and the Trainer attaches the masker (a
Meta-ticket masker re-draws the maskable weights and draws its scores) before moving them to
the run's dtype. :func:`regenerate` repeats exactly that on the CPU, with the image shape and
ways that reading the data gave, so the same torch version gives the same numbers. Whether it
did is never assumed: every loader compares :func:`~fewmask.export.subnetwork.weights_digest`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch

from fewmask.factory import resolve
from fewmask.interfaces import Backbone, EpisodeSampler, InnerOptimizer, Masker, MetaObjective
from fewmask.registry import Registry


@attrs.frozen
class Initial:
    """The components of a run as built before meta-training (the masker attached)."""

    backbone: Backbone
    masker: Masker
    inner: InnerOptimizer
    objective: MetaObjective
    sampler: EpisodeSampler


def regenerate(
    config: Mapping[str, Any], input_shape: Sequence[int], *, registry: Registry
) -> Initial:
    """The run's components at iteration 0, drawn as its Trainer drew them (on the CPU)."""
    resolved = resolve(dict(config), registry=registry)
    parts, experiment = resolved.components, resolved.experiment
    generator_state = torch.get_rng_state()
    try:
        torch.manual_seed(experiment.seed)
        sampler, masker = parts["sampler"].build(), parts["masker"].build()
        inner, objective = parts["inner"].build(), parts["objective"].build()
        backbone = parts["backbone"].build(input_shape=tuple(input_shape), num_classes=sampler.ways)
        masker.attach(backbone)
    finally:
        torch.set_rng_state(generator_state)  # the caller's stream is left as it was
    dtype = getattr(torch, experiment.train.dtype)
    backbone.to(torch.device("cpu"), dtype)
    masker.to(torch.device("cpu"), dtype)
    inner.attach(backbone)
    return Initial(backbone, masker, inner, objective, sampler)
