"""Built-in backbones: the fully connected networks of the Meta-ticket paper.

``omniglot_mlp``: 784 -> 256, 128, 64, 64 (times ``width``) -> ways; ``mlp5``: 3072 -> 1024, 512,
256, 128 -> ways. Each hidden block is Linear -> BatchNorm1d (eps 1e-3, batch statistics always,
no running statistics) -> ReLU. Weights are kaiming-normal (fan-in, ReLU), biases 0.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from fewmask.interfaces import Backbone
from fewmask.options import option


def _hidden_sizes(default: tuple[int, ...]):
    return option(default, help="hidden layer widths before the width factor")


@attrs.frozen
class OmniglotMLPConfig:
    """Options of ``omniglot_mlp``."""

    hidden: tuple[int, ...] = _hidden_sizes((256, 128, 64, 64))
    width: float = option(1.0, gt=0, help="width factor: each hidden size becomes int(size*width)")
    bn_eps: float = option(1e-3, gt=0, help="BatchNorm epsilon")
    batch_norm: bool = option(True, help="BatchNorm after every hidden Linear")
    mask_head: bool = option(
        False, help="let maskers prune the classifier weight too (the constant-weight experiment)"
    )


@attrs.frozen
class MLP5Config(OmniglotMLPConfig):
    """Options of ``mlp5`` (the paper's 5-layer MLP for 32x32x3 images)."""

    hidden: tuple[int, ...] = _hidden_sizes((1024, 512, 256, 128))


class LinearHeadBackbone(Backbone):
    """A backbone whose head is the Linear module ``self.classifier`` (all built-in ones)."""

    classifier: nn.Linear

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def get_classifier(self) -> nn.Module:
        return self.classifier


class LinearBlock(nn.Module):
    """Linear -> (BatchNorm1d) -> ReLU; BatchNorm always uses the current batch's statistics."""

    def __init__(self, fan_in: int, fan_out: int, bn_eps: float, batch_norm: bool):
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out)
        self.normalize = (
            nn.BatchNorm1d(fan_out, eps=bn_eps, track_running_stats=False)
            if batch_norm
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.normalize(self.linear(x)))


class MLP(LinearHeadBackbone):
    """A fully connected classifier: flatten, hidden :class:`LinearBlock` s, Linear head."""

    def __init__(self, config: OmniglotMLPConfig, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.config = config
        sizes = [math.prod(input_shape)] + [max(1, int(s * config.width)) for s in config.hidden]
        self.features = nn.Sequential(
            nn.Flatten(),
            *(
                LinearBlock(a, b, config.bn_eps, config.batch_norm)
                for a, b in zip(sizes[:-1], sizes[1:])
            ),
        )
        self.num_features = sizes[-1]
        self.classifier = nn.Linear(self.num_features, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def maskable_parameter_names(self) -> list[str]:
        hidden = [
            f"features.{i}.linear.weight"
            for i, block in enumerate(self.features)
            if isinstance(block, LinearBlock)
        ]
        return hidden + (["classifier.weight"] if self.config.mask_head else [])
