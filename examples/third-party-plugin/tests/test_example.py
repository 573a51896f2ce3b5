"""The example plugin: entry point, mask state in buffers, checkpoints, the query loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewmask_plugin_example import (
    GlobalMagnitudeConfig,
    GlobalMagnitudeMasker,
    SmoothedScoresConfig,
    SmoothedScoresObjective,
)

import fewmask


def test_plugin_is_found_through_its_entry_point():
    registry = fewmask.load_registry(autoload=False, only=["example"], strict=True)
    info = registry.get("masker", "global_magnitude")
    assert info.cls is GlobalMagnitudeMasker
    assert info.provider.distribution == "fewmask-plugin-example"
    assert registry.get("objective", "smoothed_scores").cls is SmoothedScoresObjective


def attached(sparsity: float = 0.5):
    backbone = fewmask.create(
        "backbone", "omniglot_mlp", {"hidden": [32, 16]}, input_shape=(1, 28, 28), num_classes=5
    )
    masker = GlobalMagnitudeMasker(GlobalMagnitudeConfig(sparsity=sparsity))
    masker.attach(backbone)
    return backbone, masker


def test_one_threshold_prunes_the_fraction_of_all_weights():
    backbone, masker = attached(0.3)
    masks = masker.masks()
    assert set(masks) == set(backbone.maskable_parameter_names())
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert pruned == int(0.3 * total)
    kept_scores = torch.cat([masker.scores[n.replace(".", "/")][m == 1] for n, m in masks.items()])
    assert kept_scores.min() == masker.threshold


def test_state_is_in_the_state_dict_and_moves_with_to():
    backbone, masker = attached()
    keys = set(masker.state_dict())
    assert "threshold" in keys
    assert {f"scores.{n.replace('.', '/')}" for n in backbone.maskable_parameter_names()} < keys
    masker.to(torch.float64)
    assert masker.threshold.dtype == torch.float64
    assert all(m.dtype == torch.float64 for m in masker.masks().values())


def test_straight_through_gradient_reaches_pruned_scores():
    backbone, masker = attached()
    name = backbone.maskable_parameter_names()[0]
    (masker.masks()[name] * torch.randn_like(masker.masks()[name])).sum().backward()
    score = masker.meta_parameters()[name]
    pruned = masker.masks()[name].detach() == 0
    assert pruned.any() and (score.grad[pruned] != 0).all()


def test_query_loss_is_label_smoothed():
    logits, labels = torch.randn(10, 5), torch.arange(10) % 5
    smoothed = SmoothedScoresObjective(SmoothedScoresConfig(smoothing=0.2))
    plain = SmoothedScoresObjective(SmoothedScoresConfig(smoothing=0.0))
    expected = F.cross_entropy(logits, labels, label_smoothing=0.2)
    torch.testing.assert_close(smoothed.query_loss(logits, labels), expected)
    torch.testing.assert_close(plain.query_loss(logits, labels), F.cross_entropy(logits, labels))
    assert smoothed.support_loss(logits, labels) == F.cross_entropy(logits, labels)


def config(tmp_path, **train):
    return {
        "seed": 3,
        "run_dir": str(tmp_path / "run"),
        "dataset": {"name": "glyphs"},
        "backbone": {"name": "omniglot_mlp", "options": {"hidden": [32, 16]}},
        "objective": {"name": "smoothed_scores", "options": {"smoothing": 0.1}},
        "train": {"val_episodes": 0, "test_episodes": 3, "progress": False, **train},
    }


def test_bad_options_are_reported_with_their_path(tmp_path):
    bad = config(tmp_path)
    bad["objective"]["options"] = {"smoothing": 1.5, "lr": 1.0, "min_lr": 2.0}
    bad["masker"] = {"name": "global_magnitude", "options": {"sparsity": -0.1}}
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.resolve(bad)
    message = str(caught.value)
    assert "$.objective.options.smoothing: must be < 1, got 1.5" in message
    assert "$.masker.options.sparsity: must be >= 0, got -0.1" in message
    bad["objective"]["options"] = {"lr": 1.0, "min_lr": 2.0}
    with pytest.raises(fewmask.ConfigError, match=r"\$.objective.options.min_lr: must be <= lr"):
        fewmask.resolve(bad)


def test_checkpoint_restores_the_masks(tmp_path):
    """Train and checkpoint; a Trainer built with another seed (other weights, so other
    scores) resumes from that checkpoint to the same masks."""
    trainer = fewmask.build_trainer(config(tmp_path, iterations=2))
    assert isinstance(trainer.masker, GlobalMagnitudeMasker)  # the objective's default masker
    trainer.fit()  # writes the run folder's checkpoint at the last iteration
    other = fewmask.build_trainer({**config(tmp_path, iterations=2), "seed": 4})
    masks = trainer.masker.masks()
    assert any(not torch.equal(other.masker.masks()[n], m) for n, m in masks.items())
    other.resume()  # the same run folder
    assert other.iteration == 2
    assert torch.equal(other.masker.threshold, trainer.masker.threshold)
    assert all(torch.equal(other.masker.masks()[n], m) for n, m in masks.items())
