"""Backbone options are checked at config validation, before any data is read or tensor allocated.

Also: the parameter counts behind the size limit equal those of the built networks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fewmask
from fewmask.builtins.backbones import (
    MAX_PARAMETERS,
    MLP,
    MLP5Config,
    OmniglotMLPConfig,
    mlp_parameter_count,
)
from fewmask.builtins.convnets import (
    Conv4,
    Conv4Config,
    ResNet12,
    ResNet12Config,
    WideResNet,
    WRNConfig,
    conv4_parameter_count,
    resnet12_parameter_count,
    wrn_parameter_count,
)
from fewmask.errors import ConfigError
from fewmask.options import check_values


def experiment(tmp_path, backbone: dict) -> dict:
    """A config whose dataset root does not exist: any attempt to read data would fail."""
    return {
        "dataset": {"name": "omniglot", "options": {"root": str(tmp_path / "missing")}},
        "sampler": {"name": "episodic", "options": {"ways": 5, "shots": 1}},
        "backbone": backbone,
    }


BAD_OPTIONS = [
    ("omniglot_mlp", {"hidden": [0, -5]}, "hidden", "sizes must be positive, got [0, -5]"),
    ("omniglot_mlp", {"width": 1e-9}, "width", "leaves the hidden layer of size 64 with 0 units"),
    ("omniglot_mlp", {"width": 0.0}, "width", "must be > 0"),
    ("omniglot_mlp", {"width": 1e9}, "width", "at least 4.51e+22 parameters"),
    ("mlp5", {"hidden": [100_000_000_000]}, "hidden", "at least 5e+11 parameters"),
    ("mlp5", {"hidden": [10**400]}, "hidden", "too many parameters"),
    ("mlp5", {"width": 1e300}, "width", "too many parameters"),
    ("conv4", {"channels": 100_000}, "channels", "more than the limit of 2**31"),
    ("resnet12", {"channels": [8, 8]}, "channels", "must be 4 positive widths, got [8, 8]"),
    ("resnet12", {"channels": [8, 8, 0, 8]}, "channels", "must be 4 positive widths"),
    ("resnet12", {"channels": [64, 64, 64, 10**6]}, "channels", "more than the limit of 2**31"),
    ("wrn28_10", {"depth": 27}, "depth", "must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got 27"),
    ("wrn28_10", {"depth": 4}, "depth", "must be >= 10"),
    ("wrn28_10", {"widen_factor": 10**5}, "widen_factor", "more than the limit of 2**31"),
    ("wrn28_10", {"depth": 6 * 10**6 + 4}, "depth", "more than the limit of 2**31"),
]


@pytest.mark.parametrize(
    ("name", "options", "field", "message"),
    BAD_OPTIONS,
    ids=[f"{name}-{next(iter(options))}-{i}" for i, (name, options, *_) in enumerate(BAD_OPTIONS)],
)
def test_validation_rejects_bad_backbone_options(tmp_path, name, options, field, message):
    with pytest.raises(ConfigError) as caught:
        fewmask.resolve(experiment(tmp_path, {"name": name, "options": options}))
    (problem,) = caught.value.problems  # about the backbone only, not the missing data
    assert problem.startswith(f"$.backbone.options.{field}: "), problem
    assert message in problem, problem


def test_the_same_config_with_good_options_validates(tmp_path):
    resolved = fewmask.resolve(experiment(tmp_path, {"name": "wrn28_10", "options": {}}))
    assert resolved.experiment.backbone.name == "wrn28_10"
    assert not (tmp_path / "missing").exists()


def test_both_wrn_sizes_are_named_when_neither_alone_is_to_blame():
    problems = WRNConfig(depth=6 * 10**6 + 4, widen_factor=10**4).check()
    assert set(problems) == {"depth", "widen_factor"}


def test_fewmask_validate_reports_the_backbone_before_reading_data(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"dataset: {{name: omniglot, options: {{root: {tmp_path / 'missing'}}}}}\n"
        "backbone: {name: omniglot_mlp, options: {width: 1e9, hidden: [0, -5]}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fewmask.cli", "validate", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "$.backbone.options.hidden: sizes must be positive, got [0, -5]" in done.stderr
    assert "missing" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("build", "config", "field"),
    [
        (MLP, OmniglotMLPConfig(width=1e-9), "width"),
        (WideResNet, WRNConfig(depth=27), "depth"),
        (ResNet12, ResNet12Config(channels=(4, 4)), "channels"),
    ],
    ids=["mlp", "wrn", "resnet12"],
)
def test_configs_built_in_python_are_checked_by_the_constructor(build, config, field):
    with pytest.raises(ConfigError) as caught:
        build(config, (1, 28, 28), 5)
    (problem,) = caught.value.problems
    assert problem.startswith(f"$.backbone.options.{field}: ")


# ----------------------------------------------------------------------- parameter counts


def built_count(backbone: torch.nn.Module) -> int:
    return sum(p.numel() for p in backbone.parameters())


@pytest.mark.parametrize(
    ("build", "count", "config", "shape"),
    [
        (MLP, mlp_parameter_count, OmniglotMLPConfig(), (1, 28, 28)),
        (MLP, mlp_parameter_count, MLP5Config(width=0.3, batch_norm=False), (3, 32, 32)),
        (MLP, mlp_parameter_count, OmniglotMLPConfig(hidden=()), (1, 5, 5)),
        (Conv4, conv4_parameter_count, Conv4Config(), (3, 84, 84)),
        (Conv4, conv4_parameter_count, Conv4Config(channels=3), (1, 17, 40)),
        (ResNet12, resnet12_parameter_count, ResNet12Config(), (3, 84, 84)),
        (ResNet12, resnet12_parameter_count, ResNet12Config(channels=(3, 5, 7, 9)), (1, 16, 16)),
        (WideResNet, wrn_parameter_count, WRNConfig(), (3, 84, 84)),
        (WideResNet, wrn_parameter_count, WRNConfig(depth=10, widen_factor=1), (1, 28, 28)),
        (WideResNet, wrn_parameter_count, WRNConfig(depth=16, widen_factor=2), (3, 32, 32)),
    ],
)
def test_parameter_count_matches_the_built_network(build, count, config, shape):
    with torch.device("meta"):
        backbone = build(config, shape, 7)
    assert count(config, shape, 7) == built_count(backbone)


@pytest.mark.parametrize("name", fewmask.list_components("backbone"))
def test_default_options_validate_and_stay_far_below_the_limit(name):
    config_cls = fewmask.default_registry().get("backbone", name).config_cls
    assert check_values(config_cls()) == []
    assert wrn_parameter_count(WRNConfig(), (3, 84, 84), 5) < MAX_PARAMETERS / 50
