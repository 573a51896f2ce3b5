"""The convolutional backbones: shapes, published parameter counts, maskable sets, second order.

Everything runs on small inputs (or on the meta device for WRN-28-10) to stay fast on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewmask.builtins.convnets import (
    Conv4,
    Conv4Config,
    ResNet12,
    ResNet12Config,
    WideResNet,
    WRNConfig,
    register,
)
from fewmask.errors import ConfigError
from fewmask.factory import create
from fewmask.interfaces import Episode
from fewmask.registry import Provider, Registry
from fewmask.testing import functional_forward, reference_meta_loss

WAYS = 5


def body_parameters(backbone) -> int:
    groups = backbone.parameter_groups()
    return sum(p.numel() for n, p in backbone.named_parameters() if groups[n] == "body")


def spec_masked(backbone, ignore: list[str]) -> list[str]:
    """The spec's rule (section 1.6): a parameter is masked unless its name contains a keyword."""
    return [n for n, _ in backbone.named_parameters() if not any(k in n for k in ignore)]


def small_wrn(shape=(3, 84, 84)) -> WideResNet:
    return WideResNet(WRNConfig(depth=10, widen_factor=1), shape, WAYS)


# ------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("build", "shape", "features"),
    [
        (lambda s: Conv4(Conv4Config(), s, WAYS), (1, 28, 28), 64 * 1 * 1),  # 28-14-7-3-1
        (lambda s: Conv4(Conv4Config(), s, WAYS), (3, 84, 84), 64 * 5 * 5),  # 84-42-21-10-5
        (lambda s: ResNet12(ResNet12Config(), s, WAYS), (1, 28, 28), 640),
        (lambda s: ResNet12(ResNet12Config(), s, WAYS), (3, 84, 84), 640),
        (lambda s: ResNet12(ResNet12Config(channels=(4, 8, 8, 8)), s, WAYS), (3, 16, 16), 8),
        (small_wrn, (1, 28, 28), 64),
        (small_wrn, (3, 84, 84), 64),
    ],
    ids=["conv4-28", "conv4-84", "resnet12-28", "resnet12-84", "resnet12-tiny", "wrn-28", "wrn-84"],
)
def test_logits_and_feature_shapes(build, shape, features):
    torch.manual_seed(0)
    backbone = build(shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        feats = backbone.forward_features(x)
        logits = backbone(x)
    assert feats.shape == (2, features) == (2, backbone.num_features)
    assert logits.shape == (2, WAYS)
    assert torch.isfinite(logits).all()
    assert backbone.get_classifier().in_features == features


def test_conv4_head_input_is_1600_at_84x84():
    assert Conv4(Conv4Config(), (3, 84, 84), WAYS).classifier.weight.shape == (WAYS, 1600)


# ------------------------------------------------------------------------- parameter counts


def test_conv4_body_parameter_count():
    # Conv4-64 on 3-channel images, body only:
    #   conv1 3->64:   3*64*9 = 1,728 weights + 64 biases            =   1,792
    #   conv2-4 64->64: 3 * (64*64*9 = 36,864 weights + 64 biases)  = 110,784
    #   4 BatchNorms of 64 channels: 4 * (64 gamma + 64 beta)       =     512
    #   total                                                        = 113,088
    assert body_parameters(Conv4(Conv4Config(), (3, 84, 84), WAYS)) == 113_088


def test_resnet12_body_parameter_count():
    # ResNet-12 64-160-320-640, one block per stage, convs without bias. A block c_in -> c has
    # 9*c_in*c + 2 * 9*c*c (three 3x3 convs) + c_in*c (1x1 downsample) + 4 BNs * 2c (gamma, beta):
    #   3 -> 64:      1,728 +    73,728 +   192 +  512 =    76,160
    #   64 -> 160:   92,160 +   460,800 + 10,240 + 1,280 =  564,480
    #   160 -> 320: 460,800 + 1,843,200 + 51,200 + 2,560 = 2,357,760
    #   320 -> 640: 1,843,200 + 7,372,800 + 204,800 + 5,120 = 9,425,920
    #   total 12,424,320 (the "12.4M" usually quoted for this ResNet-12)
    backbone = ResNet12(ResNet12Config(), (3, 84, 84), WAYS)
    assert body_parameters(backbone) == 12_424_320
    # the head is 640 -> ways
    assert sum(p.numel() for p in backbone.get_classifier().parameters()) == 640 * WAYS + WAYS


def test_wrn28_10_body_parameter_count():
    # Zagoruyko & Komodakis's WRN-28-10 has 36,479,194 parameters with bias-free convs and a
    # 10-way head (640*10 + 10 = 6,410), i.e. a 36,472,784-parameter body. The layout used here
    # (FEAT / learn2learn) gives every conv a bias: stem 16, per stage 8 convs of the stage width
    # plus one 1x1 shortcut: 8*160 + 160 + 8*320 + 320 + 8*640 + 640 = 10,080, so 10,096 biases.
    # Body: 36,472,784 + 10,096 = 36,482,880. Built on the meta device (no memory, no init cost).
    with torch.device("meta"):
        backbone = WideResNet(WRNConfig(), (3, 84, 84), WAYS)
    assert body_parameters(backbone) == 36_472_784 + 10_096 == 36_482_880
    assert backbone.get_classifier().weight.shape == (WAYS, 640)


# --------------------------------------------------------------------------- maskable sets


@pytest.mark.parametrize(
    ("build", "ignore", "count"),
    [
        # MT ignore_params (spec section 1.6); 3 convs + the downsample conv in 4 blocks
        (
            lambda: ResNet12(ResNet12Config(), (3, 84, 84), WAYS),
            ["bn1", "bn2", "bn3", "downsample.1", "bias", "classifier"],
            16,
        ),
        # stem + 4 blocks * 3 stages * 2 convs + 3 shortcut convs (each stage's first block)
        (
            lambda: WideResNet(WRNConfig(), (3, 84, 84), WAYS),
            ["bn1", "bn2", "bias", "classifier"],
            1 + 24 + 3,
        ),
        # Conv4 is not in MT; the same rule with its module names
        (lambda: Conv4(Conv4Config(), (1, 28, 28), WAYS), ["normalize", "bias", "classifier"], 4),
    ],
    ids=["resnet12", "wrn28_10", "conv4"],
)
def test_maskable_sets_match_the_spec(build, ignore, count):
    with torch.device("meta"):
        backbone = build()
    names = backbone.maskable_parameter_names()
    params = dict(backbone.named_parameters())
    assert len(names) == len(set(names)) == count
    assert names == spec_masked(backbone, ignore)  # same set, in registration order
    head = {id(p) for p in backbone.get_classifier().parameters()}
    norms = {
        id(p)
        for m in backbone.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    for name in names:
        assert not name.endswith(".bias")
        assert id(params[name]) not in head | norms
    convs = [f"{n}.weight" for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == convs


@pytest.mark.parametrize(
    "backbone",
    [
        Conv4(Conv4Config(channels=4), (1, 28, 28), WAYS),
        ResNet12(ResNet12Config(channels=(4, 8, 8, 8)), (1, 28, 28), WAYS),
        small_wrn((1, 28, 28)),
    ],
    ids=["conv4", "resnet12", "wrn"],
)
def test_only_the_classifier_is_head_and_norms_use_batch_statistics(backbone):
    groups = backbone.parameter_groups()
    assert [n for n, g in groups.items() if g == "head"] == ["classifier.weight", "classifier.bias"]
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.track_running_stats for m in norms)
    assert not list(backbone.buffers())


# ------------------------------------------------------------------------------ second order


def meta_gradient(backbone, shape, create_graph: bool, lr: float = 0.1):
    """Query-loss gradient w.r.t. the initial parameters after one support SGD step."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(WAYS).repeat_interleave(2)
    support = torch.randn(len(labels), *shape, generator=g, dtype=torch.float64)
    query = torch.randn(len(labels), *shape, generator=g, dtype=torch.float64)
    params = {n: p.detach().clone().requires_grad_() for n, p in backbone.named_parameters()}
    episode = Episode(support, labels, query, labels)
    rates = dict.fromkeys(params, lr)
    forward = functional_forward(backbone)
    loss = reference_meta_loss(params, None, [episode], rates, 1, not create_graph, forward)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda s: Conv4(Conv4Config(channels=8), s, WAYS), (1, 28, 28)),
        (lambda s: ResNet12(ResNet12Config(channels=(4, 8, 8, 8)), s, WAYS), (1, 28, 28)),
        (lambda s: ResNet12(ResNet12Config(channels=(4, 8, 8, 8)), s, WAYS), (3, 16, 16)),
        (lambda s: WideResNet(WRNConfig(depth=10, widen_factor=1), s, WAYS), (3, 16, 16)),
    ],
    ids=["conv4", "resnet12-28", "resnet12-16", "wrn"],
)
def test_second_order_meta_gradient_through_functional_call(build, shape):
    torch.manual_seed(0)
    backbone = build(shape).double()
    second = meta_gradient(backbone, shape, create_graph=True)
    first = meta_gradient(backbone, shape, create_graph=False)
    conv_biases = {
        f"{n}.bias"
        for n, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d) and m.bias is not None
    }
    for name, grad in second.items():
        assert torch.isfinite(grad).all(), name
        if name in conv_biases:
            # every conv bias of Conv4 and of the pre-activation WRN reaches a batch-statistics
            # BatchNorm (directly or along identity shortcuts) that subtracts it again: the
            # network does not depend on it, so its gradient is zero up to rounding
            assert grad.abs().max() < 1e-12, name
        else:
            assert grad.abs().max() > 1e-6, name
    # the second-order terms are really there: dropping them changes the meta-gradient
    assert max(float((second[n] - first[n]).abs().max()) for n in second) > 1e-4


# ------------------------------------------------------------------- registration and errors


def registry_with_convnets() -> Registry:
    registry = Registry()
    register(registry.scoped(Provider("builtins", "fewmask", "test")))
    return registry


def test_register_adds_the_three_backbones_with_their_configs():
    registry = registry_with_convnets()
    infos = {info.name: info for info in registry.list("backbone")}
    assert set(infos) == {"conv4", "resnet12", "wrn28_10"}
    assert infos["conv4"].config_cls is Conv4Config
    assert infos["resnet12"].config_cls is ResNet12Config
    assert infos["wrn28_10"].config_cls is WRNConfig
    assert (WRNConfig().depth, WRNConfig().widen_factor) == (28, 10)
    assert all(info.description for info in infos.values())
    backbone = create(
        "backbone",
        "resnet12",
        {"channels": [4, 8, 8, 8]},
        input_shape=(1, 28, 28),
        num_classes=3,
        registry=registry,
    )
    assert backbone.classifier.weight.shape == (3, 8)


def test_bad_options_and_images_raise_config_errors():
    registry = registry_with_convnets()
    kwargs = {"input_shape": (3, 32, 32), "num_classes": WAYS}
    with pytest.raises(ConfigError, match=r"\$\.backbone\.options\.depth: must be 6n\+4.*got 27"):
        create("backbone", "wrn28_10", {"depth": 27}, **kwargs, registry=registry)
    with pytest.raises(ConfigError, match=r"\$\.backbone\.options\.depth: must be >= 10"):
        create("backbone", "wrn28_10", {"depth": 4}, **kwargs, registry=registry)
    with pytest.raises(ConfigError, match=r"\$\.backbone\.options\.channels: must be 4"):
        create("backbone", "resnet12", {"channels": [8, 8]}, **kwargs, registry=registry)
    with pytest.raises(ConfigError, match=r"\$\.backbone\.options\.bn_eps: must be > 0"):
        create("backbone", "conv4", {"bn_eps": 0.0}, **kwargs, registry=registry)
    with pytest.raises(ConfigError, match=r"\$\.backbone: conv4 .* at least 16x16, got 8x8"):
        create("backbone", "conv4", {}, input_shape=(1, 8, 8), num_classes=WAYS, registry=registry)
