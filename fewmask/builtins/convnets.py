"""Built-in convolutional backbones: Conv4, ResNet-12 and Wide ResNet.

``conv4``: 4 x [3x3 conv -> BatchNorm2d -> ReLU -> 2x2 max-pool] (64 channels), flatten, Linear
head; not in the Meta-ticket code, the usual MAML baseline. ``resnet12``: the BOIL / MetaOptNet
ResNet-12 (one residual block per stage, LeakyReLU 0.1, max-pool after each stage, global average
pool). ``wrn28_10``: the pre-activation Wide ResNet 28-10 of Zagoruyko & Komodakis as used by
FEAT / learn2learn (all convs with bias, global average pool).

Every BatchNorm uses the statistics of the current batch (``track_running_stats=False``; the
network is never put in eval mode), eps 1e-5. Only standard, out-of-place operations are used so
that ``torch.func.functional_call`` with second-order autograd works through every layer.
Maskable weights are every conv weight (and hidden Linear weight, of which there are none here);
never the head, biases or norms.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewmask.builtins.backbones import LinearHeadBackbone, require_valid, size_problems
from fewmask.builtins.recompute import checkpointed
from fewmask.errors import ConfigError
from fewmask.options import option


def _bn_eps():
    return option(1e-5, gt=0, help="BatchNorm epsilon")


def _checkpoint_blocks():
    return option(
        False,
        help="recompute each block's activations in the backward pass instead of storing them "
        "(less memory, about one more forward of time; exact)",
    )


def _run_blocks(blocks, x: Tensor, checkpoint: bool) -> Tensor:
    for block in blocks:
        x = checkpointed(block, x) if checkpoint else block(x)
    return x


def _pooled_size(size: int, pools: int) -> int:
    """Spatial size after ``pools`` 2x2 max-pools (floor division, as ``nn.MaxPool2d(2)``)."""
    for _ in range(pools):
        size //= 2
    return size


def _check_image_size(name: str, input_shape: tuple[int, ...], pools: int) -> None:
    if len(input_shape) != 3:
        raise ConfigError(
            [f"$.backbone: {name} needs images of shape (C, H, W), got {tuple(input_shape)}"]
        )
    smallest = 2**pools
    if min(input_shape[1:]) < smallest:
        raise ConfigError(
            [
                f"$.backbone: {name} halves the image {pools} times and needs images of at least "
                f"{smallest}x{smallest}, got {input_shape[1]}x{input_shape[2]}"
            ]
        )


# --------------------------------------------------------------------------------------- Conv4


@attrs.frozen
class Conv4Config:
    """Options of ``conv4``."""

    channels: int = option(64, ge=1, help="channels of every conv layer")
    bn_eps: float = _bn_eps()
    checkpoint_blocks: bool = _checkpoint_blocks()

    def check(self) -> dict[str, str]:
        return size_problems(
            self, lambda c: conv4_parameter_count(c, (1, 16, 16), 1), ("channels",)
        )


def conv4_parameter_count(config: Conv4Config, input_shape: tuple[int, ...], num_classes: int):
    """Parameters of :class:`Conv4` built with these arguments (without building it)."""
    c_in, height, width = input_shape
    c = config.channels
    body = (9 * c_in * c + c) + 3 * (9 * c * c + c) + 4 * 2 * c
    features = c * _pooled_size(height, 4) * _pooled_size(width, 4)
    return body + features * num_classes + num_classes


class ConvBlock(nn.Module):
    """3x3 conv (padding 1, bias) -> BatchNorm2d (batch statistics) -> ReLU -> 2x2 max-pool."""

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.normalize = nn.BatchNorm2d(out_channels, eps=bn_eps, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(torch.relu(self.normalize(self.conv(x))), 2)


class Conv4(LinearHeadBackbone):
    """Four :class:`ConvBlock` s, flatten, Linear head (features 64 x 5 x 5 = 1600 at 84x84).

    Conv weights are kaiming-normal (fan-in, ReLU) with zero biases (which the following
    batch-statistics BatchNorm cancels anyway); the head keeps PyTorch's default Linear init.
    """

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    config_class = Conv4Config
    description = "4 x [conv3x3 -> BatchNorm -> ReLU -> max-pool] (64 ch) + Linear head"

    def __init__(self, config: Conv4Config, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        require_valid(config)
        _check_image_size("conv4", input_shape, pools=4)
        self.config = config
        self.input_shape = tuple(input_shape)  # checked against the data by the Trainer
        channels, height, width = input_shape
        self.features = nn.Sequential(
            *(
                ConvBlock(channels if i == 0 else config.channels, config.channels, config.bn_eps)
                for i in range(4)
            )
        )
        self.num_features = config.channels * _pooled_size(height, 4) * _pooled_size(width, 4)
        self.classifier = nn.Linear(self.num_features, num_classes)
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(_run_blocks(self.features, x, self.config.checkpoint_blocks), 1)

    def maskable_parameter_names(self) -> list[str]:
        return [f"features.{i}.conv.weight" for i in range(len(self.features))]


# ------------------------------------------------------------------------------------ ResNet-12


@attrs.frozen
class ResNet12Config:
    """Options of ``resnet12``."""

    channels: tuple[int, ...] = option(
        (64, 160, 320, 640), help="output channels of the 4 stages (Meta-ticket: 64,128,256,512)"
    )
    bn_eps: float = _bn_eps()
    checkpoint_blocks: bool = _checkpoint_blocks()

    def check(self) -> dict[str, str]:
        if len(self.channels) != 4 or any(c < 1 for c in self.channels):
            return {"channels": f"must be 4 positive widths, got {list(self.channels)}"}
        return size_problems(
            self, lambda c: resnet12_parameter_count(c, (1, 16, 16), 1), ("channels",)
        )


def resnet12_parameter_count(
    config: ResNet12Config, input_shape: tuple[int, ...], num_classes: int
) -> int:
    """Parameters of :class:`ResNet12` built with these arguments (without building it)."""
    widths = (input_shape[0], *config.channels)
    # per block: three 3x3 convs, the 1x1 downsample conv, four BatchNorms (gamma and beta)
    body = sum(9 * a * b + 18 * b * b + a * b + 8 * b for a, b in zip(widths[:-1], widths[1:]))
    return body + widths[-1] * num_classes + num_classes


class ResidualBlock(nn.Module):
    """ResNet-12 block: 3 x [3x3 conv (no bias) -> BN -> LeakyReLU 0.1] with a 1x1-conv + BN
    residual added before the last activation, then a 2x2 max-pool."""

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    def __init__(self, in_channels: int, out_channels: int, bn_eps: float):
        super().__init__()

        def conv3x3(c_in: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=False)

        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(out_channels, eps=bn_eps, track_running_stats=False)

        self.conv1, self.bn1 = conv3x3(in_channels), bn()
        self.conv2, self.bn2 = conv3x3(out_channels), bn()
        self.conv3, self.bn3 = conv3x3(out_channels), bn()
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=False), bn()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.downsample(x), 0.1)
        return F.max_pool2d(out, 2)


class ResNet12(LinearHeadBackbone):
    """ResNet-12 as in BOIL / MetaOptNet: stages ``layer1..layer4`` of one
    :class:`ResidualBlock` each, global average pool, Linear head ``classifier``.

    The default widths 64-160-320-640 are BOIL's (about 12.4M parameters); the Meta-ticket code
    (``ResNet12_boil``) used 64-128-256-512, which ``channels`` selects. Conv weights are
    kaiming-normal (fan-out, leaky_relu), BN gamma 1 and beta 0, the head PyTorch's default.
    84x84 images shrink 84 -> 42 -> 21 -> 10 -> 5 before the average pool.
    """

    task_separable = True  # the batched engine may pack its tasks (engine/task_channels.py)

    config_class = ResNet12Config
    description = "ResNet-12 (BOIL/MetaOptNet, 64-160-320-640, LeakyReLU) + Linear head"

    def __init__(self, config: ResNet12Config, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        require_valid(config)
        channels = tuple(config.channels)
        _check_image_size("resnet12", input_shape, pools=4)
        self.config = config
        self.input_shape = tuple(input_shape)  # checked against the data by the Trainer
        widths = (input_shape[0], *channels)
        self.layer1 = ResidualBlock(widths[0], widths[1], config.bn_eps)
        self.layer2 = ResidualBlock(widths[1], widths[2], config.bn_eps)
        self.layer3 = ResidualBlock(widths[2], widths[3], config.bn_eps)
        self.layer4 = ResidualBlock(widths[3], widths[4], config.bn_eps)
        self.num_features = channels[-1]
        self.classifier = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stages(self) -> list[ResidualBlock]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: Tensor) -> Tensor:
        x = _run_blocks(self.stages(), x, self.config.checkpoint_blocks)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def maskable_parameter_names(self) -> list[str]:
        return [
            f"layer{i}.{conv}.weight"
            for i in range(1, 5)
            for conv in ("conv1", "conv2", "conv3", "downsample.0")
        ]


# ---------------------------------------------------------------------------------- Wide ResNet


@attrs.frozen
class WRNConfig:
    """Options of ``wrn28_10`` (any Wide ResNet with depth = 6n + 4)."""

    depth: int = option(28, ge=10, help="total depth 6n+4 (n pre-activation blocks per stage)")
    widen_factor: int = option(10, ge=1, help="width multiplier k: stage widths 16k, 32k, 64k")
    bn_eps: float = _bn_eps()
    checkpoint_blocks: bool = _checkpoint_blocks()

    def check(self) -> dict[str, str]:
        if (self.depth - 4) % 6 != 0:
            return {"depth": f"must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {self.depth}"}
        return size_problems(
            self, lambda c: wrn_parameter_count(c, (1, 1, 1), 1), ("depth", "widen_factor")
        )


def wrn_parameter_count(config: WRNConfig, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Parameters of :class:`WideResNet` built with these arguments (without building it)."""
    blocks = (config.depth - 4) // 6
    widths = (16, 16 * config.widen_factor, 32 * config.widen_factor, 64 * config.widen_factor)
    total = 9 * input_shape[0] * 16 + 16  # stem conv
    for stage in (1, 2, 3):
        a, b = widths[stage - 1], widths[stage]
        # BN(a) -> conv3x3 a->b -> BN(b) -> conv3x3 b->b; a 1x1 shortcut conv where the shape
        # changes (the first block of stages 2 and 3 stride, and of any stage that widens)
        first = 2 * a + 9 * a * b + b + 2 * b + 9 * b * b + b
        if stage > 1 or a != b:
            first += a * b + b
        total += first + (blocks - 1) * (4 * b + 18 * b * b + 2 * b)
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


class WideBlock(nn.Module):
    """Pre-activation block: BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv (stride), plus a
    shortcut that is a 1x1 conv (with bias) when the shape changes and the identity otherwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_eps: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=bn_eps, track_running_stats=False)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps, track_running_stats=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride))
            if stride != 1 or in_channels != out_channels
            else nn.Sequential()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNetBody(nn.Module):
    """Stem conv, three stages of :class:`WideBlock` s, final BN -> ReLU, global average pool."""

    def __init__(
        self, in_channels: int, depth: int, widen_factor: int, bn_eps: float, checkpoint: bool
    ):
        super().__init__()
        self.checkpoint = checkpoint
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        for stage, stride in enumerate((1, 2, 2), start=1):
            c_in, c_out = widths[stage - 1], widths[stage]
            layer = nn.Sequential(
                *(
                    WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, bn_eps)
                    for i in range(blocks)
                )
            )
            self.add_module(f"layer{stage}", layer)
        self.bn1 = nn.BatchNorm2d(widths[3], eps=bn_eps, track_running_stats=False)
        self.num_features = widths[3]

    def forward(self, x: Tensor) -> Tensor:
        blocks = [*self.layer1, *self.layer2, *self.layer3]
        out = _run_blocks(blocks, self.conv1(x), self.checkpoint)
        out = torch.relu(self.bn1(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class WideResNet(LinearHeadBackbone):
    """WRN-depth-k (pre-activation, FEAT / learn2learn layout): body ``features``, Linear head
    ``classifier``; PyTorch's default init everywhere.

    Stage widths 16k, 32k, 64k with strides 1, 2, 2 (84x84 -> 84 -> 42 -> 21), global average
    pool (the reference code's ``avg_pool2d(21)`` is the same at 84x84 and also works at other
    sizes here). WRN-28-10 has about 36.5M parameters. Every conv bias ends in a batch-statistics
    BatchNorm (directly or along identity shortcuts) that removes it, so with
    ``track_running_stats=False`` the biases never change the output; they are kept for the
    reference layout and parameter count.
    """

    config_class = WRNConfig
    description = "Wide ResNet 28-10 (pre-activation, conv biases, ~36.5M params) + Linear head"

    def __init__(self, config: WRNConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        require_valid(config)
        if len(input_shape) != 3:
            raise ConfigError(
                [f"$.backbone: wrn needs images of shape (C, H, W), got {tuple(input_shape)}"]
            )
        self.config = config
        self.input_shape = tuple(input_shape)  # checked against the data by the Trainer
        self.features = WideResNetBody(
            input_shape[0],
            config.depth,
            config.widen_factor,
            config.bn_eps,
            config.checkpoint_blocks,
        )
        self.num_features = self.features.num_features
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def maskable_parameter_names(self) -> list[str]:
        names = ["features.conv1.weight"]
        for stage in ("layer1", "layer2", "layer3"):
            for i, block in enumerate(getattr(self.features, stage)):
                names += [
                    f"features.{stage}.{i}.conv1.weight",
                    f"features.{stage}.{i}.conv2.weight",
                ]
                if len(block.shortcut) > 0:
                    names.append(f"features.{stage}.{i}.shortcut.0.weight")
        return names


def register(registry) -> None:
    """Register ``conv4``, ``resnet12`` and ``wrn28_10`` with ``registry``."""
    registry.add_backbone("conv4", Conv4)
    registry.add_backbone("resnet12", ResNet12)
    registry.add_backbone("wrn28_10", WideResNet)
