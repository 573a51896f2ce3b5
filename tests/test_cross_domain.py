"""Cross-domain meta-testing: shape matching, config-listed test sets, `fewmask test --dataset`."""

from __future__ import annotations

import json

import pytest
import torch

from fewmask import DatasetError
from fewmask.cli import main
from fewmask.datasets.transforms import match_shape
from fewmask.testing import make_dataset


def test_match_shape_resizes_and_converts_channels():
    rgb = make_dataset(classes=3, per_class=2, shape=(3, 32, 32))
    gray = match_shape(rgb, (1, 28, 28))
    assert gray.images.shape == (6, 1, 28, 28) and gray.images.dtype == torch.uint8
    assert torch.equal(gray.labels, rgb.labels)
    flat = make_dataset(classes=2, per_class=2, shape=(1, 8, 8))
    flat = type(flat)(torch.full_like(flat.images, 200), flat.labels, flat.class_names)
    big = match_shape(flat, (3, 16, 16))
    assert big.images.shape == (4, 3, 16, 16) and bool((big.images == 200).all())
    assert match_shape(flat, (1, 8, 8)) is flat
    with pytest.raises(DatasetError, match="2-channel"):
        match_shape(make_dataset(shape=(2, 4, 4)), (3, 4, 4))


CONFIG = """
run_dir: {run}
backbone: {{name: omniglot_mlp, options: {{hidden: [16, 8]}}}}
objective: {{name: metaticket, options: {{warmup: 1}}}}
test_datasets:
  - {{name: glyphs, options: {{rotations: true}}}}
  - {{name: glyphs}}
train: {{iterations: 2, val_episodes: 0, test_episodes: 10, progress: false}}
"""


def test_config_lists_cross_domain_test_sets_and_cli_tests_another(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(run=tmp_path / "run"))
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "meta-test on glyphs:" in out and "meta-test on glyphs#2:" in out
    assert "| own test split | glyphs | glyphs#2 |" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["cross_domain"]) == {"glyphs", "glyphs#2"}
    own = results["accuracy"]
    assert results["cross_domain"]["glyphs#2"]["accuracy"] == own, "same data, same episodes"
    args = ["test", str(tmp_path / "run"), "--episodes", "5", "-o", "train.progress=false"]
    assert main([*args, "--dataset", "glyphs", "--dataset-options", "{rotations: true}"]) == 0
    assert "meta-test on glyphs/test (5-way 1-shot, 5 episodes" in capsys.readouterr().out
    assert main([*args, "--dataset", "glyhps"]) == 2
    assert "Did you mean 'glyphs'" in capsys.readouterr().err
    assert main([*args, "--dataset", "glyphs", "--dataset-options", "{sett: heldout}"]) == 2
    assert "unknown key(s): sett" in capsys.readouterr().err
