"""timm plugin: entry point, model preparation, second-order autograd and a tiny Meta-ticket run."""

from __future__ import annotations

import time

import pytest
import timm
import torch
import torch.nn.functional as F
from fewmask_plugin_timm import DoubleBackwardHardSigmoid, TimmBackbone, TimmConfig
from timm.layers import BatchNormAct2d
from torch import nn

import fewmask
from fewmask import Episode, TrainConfig, Trainer, create, load_registry
from fewmask.testing import functional_forward, make_dataset, reference_meta_loss

MODELS = ["resnet10t", "resnet18", "mobilenetv3_small_050", "convnext_atto"]
SHAPE = (3, 32, 32)
WAYS = 5


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed 0, and one intra-op thread: small models on a shared CPU run faster without spinning."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(model_name: str, **kwargs) -> TimmBackbone:
    config = TimmConfig(model_name=model_name, kwargs=kwargs)
    return TimmBackbone(config, input_shape=SHAPE, num_classes=WAYS)


def test_plugin_is_found_through_its_entry_point():
    registry = load_registry(autoload=False, only=["timm"], strict=True)
    info = registry.get("backbone", "timm")
    assert info.cls is TimmBackbone
    assert info.provider.plugin == "timm"
    assert info.provider.distribution == "fewmask-plugin-timm"
    assert info.provider.version == "0.1.0"


def test_create_structures_the_options():
    backbone = create(
        "backbone",
        "timm",
        {"model_name": "resnet10t", "kwargs": {"drop_rate": 0.1}},
        input_shape=SHAPE,
        num_classes=WAYS,
    )
    assert backbone.config == TimmConfig("resnet10t", {"drop_rate": 0.1})
    assert backbone.model.drop_rate == 0.1


@pytest.mark.parametrize("model_name", MODELS)
def test_model_is_ready_for_second_order_meta_learning(model_name):
    backbone = build(model_name)
    x = torch.randn(WAYS, *SHAPE)
    y = torch.arange(WAYS)

    # Shapes, and the body/head split reproduces the timm model's own forward.
    backbone.eval()
    features = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    assert features.shape == (len(x), backbone.num_features)
    assert backbone.get_classifier().in_features == backbone.num_features
    logits = backbone(x)
    assert logits.shape == (len(x), WAYS)
    torch.testing.assert_close(logits, backbone.model(x))

    # BatchNorm uses batch statistics in eval mode too and keeps no running statistics.
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        assert not norm.track_running_stats
        assert norm.running_mean is None and norm.running_var is None
        assert norm.num_batches_tracked is None
    assert not any("running" in name for name, _ in backbone.named_buffers())
    backbone.train()
    torch.testing.assert_close(backbone(x), logits)
    assert not any(isinstance(m, nn.Hardsigmoid) for m in backbone.modules())
    assert not any(getattr(m, "inplace", False) for m in backbone.modules())
    if model_name.startswith("mobilenetv3"):
        assert any(isinstance(m, BatchNormAct2d) for m in norms)  # timm's fused BN + activation

    # Maskable: conv/linear weights of the body only.
    maskable = backbone.maskable_parameter_names()
    assert maskable
    groups = backbone.parameter_groups()
    params = dict(backbone.named_parameters())
    for name in maskable:
        assert name.startswith("model.") and name.endswith(".weight")
        assert groups[name] == "body"
        assert params[name].dim() in (2, 4)
        module = backbone.get_submodule(name.rsplit(".", 1)[0])
        assert isinstance(module, (nn.Conv2d, nn.Linear))
    assert not {n for n, g in groups.items() if g == "head"} & set(maskable)

    second_order_step(backbone, x, y)


def second_order_step(backbone: TimmBackbone, x: torch.Tensor, y: torch.Tensor) -> None:
    """One masked second-order inner step through functional_call, then the meta-gradient."""
    params = dict(backbone.named_parameters())
    maskable = backbone.maskable_parameter_names()
    masks = {n: torch.ones_like(params[n], requires_grad=True) for n in maskable}
    rates = dict.fromkeys(params, 0.1)
    forward = functional_forward(backbone)
    reference_meta_loss(params, masks, [Episode(x, y, x, y)], rates, 1, forward=forward).backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(torch.isfinite(m.grad).all() for m in masks.values())
    assert any(m.grad.abs().sum() > 0 for m in masks.values())


def test_vision_transformer_runs_unfused_attention():
    backbone = build("vit_tiny_patch16_224", img_size=SHAPE[1])
    attention = [m for m in backbone.modules() if hasattr(m, "fused_attn")]
    assert attention and not any(m.fused_attn for m in attention)
    assert "model.blocks.0.attn.qkv.weight" in backbone.maskable_parameter_names()
    second_order_step(backbone, torch.randn(WAYS, *SHAPE), torch.arange(WAYS))


def test_double_backward_hard_sigmoid_equals_hardsigmoid():
    x = torch.linspace(-5, 5, 1001, requires_grad=True)
    ours = DoubleBackwardHardSigmoid()(x)
    torch.testing.assert_close(ours, F.hardsigmoid(x), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (reference,) = torch.autograd.grad(F.hardsigmoid(x).sum(), x)
    torch.testing.assert_close(grad, reference)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert torch.equal(second, torch.zeros_like(second))


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(fewmask.ConfigError) as caught:
        build("resnet1O")
    (problem,) = caught.value.problems
    assert problem.startswith("$.backbone.options.model_name: unknown timm model 'resnet1O'")
    assert "Did you mean" in problem and "'resnet10t'" in problem
    assert problem.count("'resnet") <= 6


def test_reserved_and_rejected_kwargs_are_config_errors():
    with pytest.raises(fewmask.ConfigError, match="kwargs: pretrained cannot be set"):
        build("resnet10t", pretrained=True)
    with pytest.raises(fewmask.ConfigError, match="kwargs: timm.create_model"):
        build("resnet10t", no_such_option=1)


def experiment(tmp_path, options: dict) -> dict:
    """A config whose dataset root does not exist: any attempt to read data would fail."""
    return {
        "dataset": {"name": "omniglot", "options": {"root": str(tmp_path / "missing")}},
        "backbone": {"name": "timm", "options": options},
    }


@pytest.fixture
def no_model_building(monkeypatch):
    """Validation builds no model in memory (on PyTorch's meta device only: shapes, no data)."""
    real, outside = timm.create_model, []

    def on_meta_only(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            outside.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", on_meta_only)
    yield
    assert not outside, f"timm.create_model called outside the meta device: {outside}"


@pytest.mark.usefixtures("no_model_building")
@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"model_name": "resnet1O"}, "model_name", "unknown timm model 'resnet1O'. Did you mean"),
        ({"kwargs": {"pretrained": True}}, "kwargs", "pretrained cannot be set here"),
        ({"kwargs": {"num_classes": 3, "in_chans": 1}}, "kwargs", "in_chans, num_classes cannot"),
        ({"kwargs": {"features_only": True}}, "kwargs", "features_only cannot be set here"),
        ({"kwargs": {"checkpoint_path": "w.pth"}}, "kwargs", "always randomly initialised"),
        ({"kwargs": {"exportable": False}}, "kwargs", "exportable cannot be set here"),
        ({"kwargs": {"bogus": 1}}, "kwargs", "rejected them: ResNet.__init__() got an unexpected"),
    ],
)
def test_validation_rejects_bad_options_without_building(tmp_path, options, field, message):
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.resolve(experiment(tmp_path, options))
    (problem,) = caught.value.problems  # about the backbone only, not the missing data
    assert problem.startswith(f"$.backbone.options.{field}: "), problem
    assert message in problem, problem


@pytest.mark.usefixtures("no_model_building")
def test_good_options_validate_without_building(tmp_path):
    options = {"model_name": "resnet18.a1_in1k", "kwargs": {"drop_rate": 0.1}}
    fewmask.resolve(experiment(tmp_path, options))


def test_reset_classifier_gives_a_fresh_head_of_the_new_width():
    backbone = build("resnet10t")
    old = backbone.get_classifier()
    backbone.reset_classifier(3)
    assert backbone.get_classifier() is not old
    assert backbone.get_classifier().out_features == 3
    x = torch.randn(2, *SHAPE)
    assert backbone(x).shape == (2, 3)
    torch.testing.assert_close(backbone(x), backbone.model(x))


def metaticket_trainer(device: str, iterations: int) -> Trainer:
    data = make_dataset(classes=6, per_class=2, shape=SHAPE)
    backbone = create(
        "backbone", "timm", {"model_name": "resnet10t"}, input_shape=SHAPE, num_classes=WAYS
    )
    return Trainer(
        backbone,
        create("masker", "metaticket"),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 1}),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1}),
        {"train": data},
        TrainConfig(iterations=iterations, test_episodes=2, progress=False, device=device),
    )


def test_tiny_metaticket_run():
    trainer = metaticket_trainer("cpu", iterations=2)
    weights = {n: p.detach().clone() for n, p in trainer.backbone.named_parameters()}
    scores = {n: p.detach().clone() for n, p in trainer.masker.meta_parameters().items()}
    results = trainer.fit()
    assert 0.0 <= results["accuracy"] <= 1.0
    assert set(scores) == set(trainer.backbone.maskable_parameter_names())
    for name, p in trainer.backbone.named_parameters():
        assert torch.equal(p, weights[name]), f"{name} must not be meta-learned"
    assert any(not torch.equal(p, scores[n]) for n, p in trainer.masker.meta_parameters().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metaticket_meta_iteration_on_cuda():
    trainer = metaticket_trainer("cuda", iterations=2)
    trainer.train_step()  # warm-up: cuDNN autotuning and allocations
    torch.cuda.synchronize()
    start = time.perf_counter()
    stats = trainer.train_step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(
        f"resnet10t Meta-ticket meta-iteration on {torch.cuda.get_device_name()}: {elapsed:.3f} s"
    )
    assert torch.isfinite(torch.tensor(stats["loss"]))
    assert 0.0 <= stats["accuracy"] <= 1.0
    assert all(p.device.type == "cuda" for p in trainer.masker.meta_parameters().values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("model_name", "kwargs"),
    [("mobilenetv3_small_050", {}), ("vit_tiny_patch16_224", {"img_size": SHAPE[1]})],
)
def test_second_order_step_on_cuda(model_name, kwargs):
    backbone = build(model_name, **kwargs).cuda()
    x, y = torch.randn(WAYS, *SHAPE, device="cuda"), torch.arange(WAYS, device="cuda")
    second_order_step(backbone, x, y)
