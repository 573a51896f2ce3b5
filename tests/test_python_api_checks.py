"""Mistakes made from Python get a clear error, not a tensor traceback: a backbone built for
other images or another number of classes, a schedule of zero iterations, IteRand without a
masker that prunes. Plus `create` with config field names and `list_components`."""

from __future__ import annotations

import pytest

from fewmask import ConfigError, TrainConfig, Trainer, create, list_components, resolve
from fewmask.testing import make_dataset

SHAPE = (1, 28, 28)


def trainer(backbone=None, ways: int = 5, train: TrainConfig | None = None) -> Trainer:
    data = make_dataset()
    return Trainer(
        backbone or create("backbone", "omniglot_mlp", input_shape=SHAPE, num_classes=ways),
        create("masker", "dense"),
        create("inner", "sgd"),
        create("objective", "maml"),
        create("sampler", "episodic", {"ways": ways, "shots": 1}),
        {"train": data},
        train or TrainConfig(iterations=1, val_episodes=0, progress=False),
    )


@pytest.mark.parametrize("name", ["omniglot_mlp", "conv4"])
def test_a_backbone_built_for_other_images_is_refused(name):
    backbone = create("backbone", name, input_shape=(3, 32, 32), num_classes=5)
    assert backbone.input_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match=r"built for images of shape \(3, 32, 32\), but the data"):
        trainer(backbone)


def test_a_head_of_the_wrong_width_is_refused():
    backbone = create("backbone", "omniglot_mlp", input_shape=SHAPE, num_classes=3)
    with pytest.raises(ConfigError, match="predicts 3 classes, but the sampler draws 5-way"):
        trainer(backbone, ways=5)


def test_zero_iterations_are_refused():
    with pytest.raises(ConfigError, match=r"\$\.train\.iterations: must be >= 1, got 0"):
        trainer(train=TrainConfig(iterations=0))


def test_iterand_around_a_masker_without_scores_is_refused_at_validation():
    config = {
        "backbone": "omniglot_mlp",
        "masker": {"name": "iterand", "options": {"base": "dense"}},
    }
    with pytest.raises(ConfigError, match=r"\$\.masker\.options\.base: .*'dense' has no scores"):
        resolve(config)
    masker = create("masker", "iterand", {"base": {"name": "metaticket"}})
    assert type(masker.base).__name__ == "MetaTicketMasker"


def test_iterand_around_any_masker_without_scores_is_refused_when_attached():
    """A third-party masker without scores is known only once it is attached (before training)."""
    from fewmask_plugin_iterand import IteRandConfig, IteRandMasker

    from fewmask import ComponentRef

    masker = IteRandMasker(IteRandConfig(base=ComponentRef("mine")), base=create("masker", "dense"))
    backbone = create("backbone", "omniglot_mlp", input_shape=SHAPE, num_classes=5)
    with pytest.raises(ConfigError, match="'mine' has no scores"):
        masker.attach(backbone)


def test_create_takes_config_field_names_and_list_components_lists_them():
    assert create("inner", "sgd").steps == create("inner_optimizer", "sgd").steps
    assert "sgd" in list_components("inner") and "metaticket" in list_components("masker")
    assert "masker:iterand" in list_components()
    with pytest.raises(ConfigError, match="unknown component kind 'maskers'"):
        list_components("maskers")
