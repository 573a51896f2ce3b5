"""IteRand: entry point, only pruned weights change, at the right iterations, at the right rate."""

from __future__ import annotations

import pytest
import torch
from fewmask_plugin_iterand import IteRandMasker

from fewmask import (
    ConfigError,
    TrainConfig,
    Trainer,
    UnknownComponentError,
    create,
    load_registry,
    resolve,
)
from fewmask.testing import make_dataset


def test_plugin_is_found_through_its_entry_point():
    registry = load_registry(autoload=False, only=["iterand", "metaticket"], strict=True)
    assert registry.get("masker", "iterand").provider.distribution == "fewmask-plugin-iterand"
    blocked = load_registry(blocked=["iterand"], strict=True)
    with pytest.raises(UnknownComponentError):
        blocked.get("masker", "iterand")


def attached(rate: float, period: int, sparsity: float = 0.5):
    torch.manual_seed(0)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [200, 100]}, input_shape=(1, 28, 28), num_classes=5
    )
    masker = create(
        "masker",
        "iterand",
        {
            "period": period,
            "rate": rate,
            "base": {"name": "metaticket", "options": {"init_sparsity": sparsity}},
        },
    )
    masker.attach(backbone)
    return backbone, masker


@pytest.mark.parametrize("rate", [1.0, 0.3])
def test_only_pruned_weights_change_at_the_right_iterations_and_rate(rate):
    backbone, masker = attached(rate, period=3)
    name = "features.1.linear.weight"
    pruned = masker.masks()[name].detach() == 0
    before = backbone.get_parameter(name).detach().clone()
    for iteration in range(2):  # iterations 0, 1: nothing happens
        masker.on_outer_step(iteration, backbone)
    assert torch.equal(backbone.get_parameter(name), before) and masker.events == 0
    masker.on_outer_step(2, backbone)  # the 3rd update: re-randomise
    after = backbone.get_parameter(name).detach()
    changed = after != before
    assert masker.events == 1
    assert not changed[~pruned].any(), "kept weights never change"
    fraction = changed[pruned].float().mean().item()
    assert fraction == pytest.approx(rate, abs=0.02)
    fresh = after[changed]
    assert fresh.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.05)
    for iteration in range(3, 5):
        masker.on_outer_step(iteration, backbone)
    assert masker.events == 1
    masker.on_outer_step(5, backbone)
    assert masker.events == 2


def test_rate_zero_changes_nothing():
    backbone, masker = attached(0.0, period=1)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    masker.on_outer_step(0, backbone)
    assert all(torch.equal(p, before[n]) for n, p in backbone.named_parameters())


def test_composes_with_metaticket_in_a_trainer():
    data = make_dataset()
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [16, 8]}, input_shape=(1, 28, 28), num_classes=5
    )
    trainer = Trainer(
        backbone,
        create("masker", "iterand", {"period": 2}),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 1}),
        create("sampler", "episodic"),
        {"train": data},
        TrainConfig(iterations=4, test_episodes=3, progress=False),
    )
    assert isinstance(trainer.masker, IteRandMasker)
    assert set(trainer.meta_params) == set(backbone.maskable_parameter_names())
    trainer.fit()
    assert trainer.masker.events == 2


def test_bad_base_options_are_reported_with_their_path():
    with pytest.raises(ConfigError, match=r"\$.masker.options.base.options: unknown key"):
        create("masker", "iterand", {"base": {"name": "metaticket", "options": {"sparsity": 0.5}}})
    base = {"name": "metaticket", "options": {"init_sparsity": 2}}
    with pytest.raises(ConfigError, match=r"\$.masker.options.base.options.init_sparsity: must"):
        create("masker", "iterand", {"base": base})
    with pytest.raises(ConfigError, match=r"\$.masker.options.base.name: no masker named 'metat"):
        create("masker", "iterand", {"base": {"name": "metatiket"}})


def test_validate_checks_the_wrapped_masker_before_any_data_is_read(tmp_path):
    """The nested reference is resolved with the config: a bad base fails `validate`."""
    config = {
        "backbone": {"name": "omniglot_mlp"},
        "dataset": {"name": "omniglot", "options": {"root": str(tmp_path / "missing")}},
        "objective": {"name": "metaticket"},
        "masker": {"name": "iterand", "options": {"base": {"name": "nope"}}},
    }
    with pytest.raises(ConfigError, match=r"\$.masker.options.base.name: no masker named 'nope'"):
        resolve(config)
    resolved = resolve({**config, "masker": {"name": "iterand"}})
    assert resolved.components["masker"].nested["base"].name == "metaticket"


def test_redraws_are_recorded_as_scalars(tmp_path):
    """``masker/redraws`` counts the re-draws so far; ``masker/redrawn_weights`` is how many
    weights the last one replaced (every weight that changed: Meta-ticket learns no weights)."""
    import json

    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [16, 8]}, input_shape=(1, 28, 28), num_classes=5
    )
    trainer = Trainer(
        backbone,
        create("masker", "iterand", {"period": 2, "base": {"name": "metaticket"}}),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 1}),
        create("sampler", "episodic"),
        {"train": make_dataset()},
        TrainConfig(iterations=4, test_episodes=2, progress=False, log_every=1),
        run_dir=tmp_path / "run",
    )
    weights = [{n: p.detach().clone() for n, p in backbone.named_parameters()}]
    trainer.fit(
        callbacks=[
            lambda t: weights.append(
                {n: p.detach().clone() for n, p in t.backbone.named_parameters()}
            )
        ]
    )
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    redraws = [(r["step"], r["value"]) for r in rows if r["tag"] == "masker/redraws"]
    assert redraws == [(1, 0), (2, 1), (3, 1), (4, 2)]
    redrawn = {r["step"]: r["value"] for r in rows if r["tag"] == "masker/redrawn_weights"}
    for step in (2, 4):
        changed = sum(int((weights[step][n] != weights[step - 1][n]).sum()) for n in weights[step])
        assert redrawn[step] == changed > 0
    assert redrawn[3] == redrawn[2]  # the last re-draw's count until the next one
