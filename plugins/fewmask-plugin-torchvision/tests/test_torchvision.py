"""torchvision plugin: entry point, options, the wrapped model, and tiny MAML/Meta-ticket runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from fewmask_plugin_torchvision import TorchvisionBackbone, TorchvisionConfig
from torch import nn

import fewmask
from fewmask import FewShotDataset, TrainConfig, Trainer, create

SHAPE = (3, 16, 16)
WAYS = 3
EXAMPLE = Path(__file__).parents[3] / "examples" / "glyphs" / "torchvision_resnet.yaml"


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(model: str = "resnet18", shape=SHAPE, **kwargs) -> TorchvisionBackbone:
    config = TorchvisionConfig(model=model, kwargs=kwargs)
    return TorchvisionBackbone(config, input_shape=shape, num_classes=WAYS)


def test_plugin_is_found_through_its_entry_point():
    registry = fewmask.load_registry(autoload=False, only=["torchvision"], strict=True)
    info = registry.get("backbone", "torchvision")
    assert info.cls is TorchvisionBackbone
    assert info.provider.distribution == "fewmask-plugin-torchvision"
    assert info.provider.version == "0.1.0"


def test_resnet_is_wrapped_with_batch_statistics_and_a_linear_head():
    backbone = create(
        "backbone", "torchvision", {"model": "resnet18"}, input_shape=SHAPE, num_classes=WAYS
    )
    assert isinstance(backbone, fewmask.Backbone) and backbone.config.model == "resnet18"
    assert backbone.get_classifier() is backbone.model.fc and backbone.num_features == 512
    x = torch.randn(4, *SHAPE)
    logits = backbone(x)
    assert logits.shape == (4, WAYS)
    torch.testing.assert_close(backbone.forward_head(backbone.forward_features(x)), logits)
    assert not any("running" in name for name, _ in backbone.named_buffers())
    assert not any(getattr(m, "inplace", False) for m in backbone.modules())
    maskable = backbone.maskable_parameter_names()
    convs = [n for n, m in backbone.model.named_modules() if isinstance(m, nn.Conv2d)]
    assert maskable == [f"model.{n}.weight" for n in convs]  # every conv, not the head


def test_one_channel_images_get_a_one_channel_first_convolution():
    backbone = build(shape=(1, 28, 28))
    assert backbone.model.conv1.in_channels == 1 and backbone.model.conv1.out_channels == 64
    assert backbone(torch.randn(2, 1, 28, 28)).shape == (2, WAYS)


def test_reset_classifier():
    backbone = build()
    backbone.reset_classifier(7)
    assert backbone.model.fc.out_features == 7
    assert backbone(torch.randn(2, *SHAPE)).shape == (2, 7)


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"model": "resnet1O"}, "model", "unknown torchvision classification model 'resnet1O'"),
        ({"model": "fasterrcnn_resnet50_fpn"}, "model", "(it is not a classification model)"),
        ({"kwargs": {"weights": "DEFAULT"}}, "kwargs", "weights cannot be set here"),
        ({"kwargs": {"num_classes": 4}}, "kwargs", "num_classes cannot be set here"),
    ],
)
def test_validation_rejects_bad_options_without_building(
    monkeypatch, tmp_path, options, field, message
):
    def refuse(*args, **kwargs):
        raise AssertionError("torchvision.models.get_model called during validation")

    monkeypatch.setattr(torchvision.models, "get_model", refuse)
    config = {
        "dataset": {"name": "omniglot", "options": {"root": str(tmp_path / "missing")}},
        "backbone": {"name": "torchvision", "options": options},
    }
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.resolve(config)
    (problem,) = caught.value.problems  # about the backbone only, not the missing data
    assert problem.startswith(f"$.backbone.options.{field}: "), problem
    assert message in problem, problem


def test_unknown_name_suggests_close_names():
    with pytest.raises(fewmask.ConfigError, match=r"Did you mean 'resnet18'"):
        build("resnet1O")


def test_models_without_a_linear_head_or_bad_kwargs_are_config_errors():
    with pytest.raises(fewmask.ConfigError, match=r"options.model: 'squeezenet1_0': .* no nn.Li"):
        build("squeezenet1_0")
    with pytest.raises(fewmask.ConfigError, match=r"options.kwargs: torchvision's 'resnet18'"):
        build(no_such_option=1)


def dataset() -> FewShotDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4 * 3, *SHAPE), generator=g, dtype=torch.uint8)
    return FewShotDataset(images, torch.arange(4).repeat_interleave(3), ("a", "b", "c", "d"))


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_resnet18_trains_from_python(algorithm):
    if algorithm == "metaticket":
        pytest.importorskip("fewmask_plugin_metaticket")
    trainer = Trainer(
        build(),
        create("masker", "metaticket" if algorithm == "metaticket" else "dense"),
        create("inner_optimizer", "sgd"),
        create("objective", algorithm, {"warmup": 1} if algorithm == "metaticket" else None),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1, "queries": 1}),
        {"train": dataset()},
        TrainConfig(iterations=2, meta_batch_size=1, test_episodes=2, progress=False),
    )
    before = {n: p.detach().clone() for n, p in trainer.meta_params.items()}
    results = trainer.fit()
    assert 0.0 <= results["accuracy"] <= 1.0 and trainer.iteration == 2
    assert any(not torch.equal(p, before[n]) for n, p in trainer.meta_params.items())


TINY = [
    "train.iterations=2",
    "train.meta_batch_size=1",
    "train.val_episodes=0",
    "train.test_episodes=2",
    "train.progress=false",
    "sampler.options.queries=1",
]


@pytest.mark.parametrize("algorithm", [[], ["objective={name: maml}", "masker={name: dense}"]])
def test_resnet18_trains_from_the_example_config(algorithm, tmp_path):
    pytest.importorskip("fewmask_plugin_metaticket")
    overrides = [*TINY, *algorithm, f"run_dir={tmp_path / 'run'}"]
    trainer = fewmask.build_trainer(EXAMPLE, overrides)
    assert isinstance(trainer.backbone, TorchvisionBackbone)
    assert trainer.backbone.model.conv1.in_channels == 1  # the glyphs are grey
    results = trainer.fit()
    assert 0.0 <= results["accuracy"] <= 1.0 and trainer.iteration == 2
