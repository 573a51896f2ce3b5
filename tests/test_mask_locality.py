"""Figure 4 as numbers: the locality index, its chance level and the overlap across seeds."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml

from fewmask.builtins.structured import patch_mask
from fewmask.cli import main
from fewmask.experiments.locality import (
    chance_mask,
    cohen_kappa,
    density_correlation,
    layer_locality,
    live_pixels,
    locality_per_unit,
    seed_overlap,
)

SHAPE = (1, 28, 28)


def border_dead() -> torch.Tensor:
    """Live pixels of glyph-like data: everything but a 3-pixel empty border."""
    live = torch.zeros(28, 28, dtype=torch.bool)
    live[3:-3, 3:-3] = True
    return live


def test_live_pixels_are_those_nonzero_in_some_image():
    images = torch.zeros(4, 2, 6, 6, dtype=torch.uint8)
    images[0, 1, 2, 3] = 7
    images[3, 0, 5, 0] = 1
    live = live_pixels(images)
    assert live.sum() == 2 and live[2, 3] and live[5, 0]


def test_a_perfectly_local_mask_scores_one_and_a_random_one_low():
    torch.manual_seed(0)
    live = border_dead()
    local = patch_mask(50, SHAPE, 5)
    index = locality_per_unit(local, SHAPE, torch.ones(28, 28, dtype=torch.bool), 5)
    assert torch.all(index == 1.0)
    smaller = patch_mask(50, SHAPE, 3)  # inside a 5x5 window too
    assert layer_locality(smaller, SHAPE, torch.ones(28, 28, dtype=torch.bool), 5)[0] == 1.0
    random = (torch.rand(50, 784) < 0.5).float()
    value, chance = layer_locality(random, SHAPE, live, 5)
    assert value < 0.1  # about 25 kept of ~240 kept live pixels
    assert value == pytest.approx(chance, abs=0.01)  # unstructured: at its chance level


def test_dead_pixels_are_left_out():
    """A local patch plus every dead border pixel kept: still perfectly local, because the
    border (0 in every image) is excluded; counted, it would not be."""
    torch.manual_seed(1)
    live = border_dead()
    mask = torch.zeros(20, 1, 28, 28)
    for unit in range(20):
        r, c = torch.randint(3, 20, (2,)).tolist()
        mask[unit, 0, r : r + 5, c : c + 5] = 1.0
    mask[:, 0][:, ~live] = 1.0  # the border: kept from the dense start, never trained
    flat = mask.flatten(1)
    assert torch.all(locality_per_unit(flat, SHAPE, live, 5) == 1.0)
    counted = locality_per_unit(flat, SHAPE, torch.ones(28, 28, dtype=torch.bool), 5)
    assert counted.max() < 0.2


def test_a_unit_without_live_weights_is_not_counted():
    live = border_dead()
    mask = torch.zeros(2, 784)
    mask[0, :28] = 1  # only the top (dead) row
    mask[1].view(28, 28)[10:14, 10:14] = 1
    index = locality_per_unit(mask, SHAPE, live, 5)
    assert math.isnan(index[0]) and index[1] == 1.0


def test_chance_mask_keeps_each_units_live_count_on_live_pixels():
    torch.manual_seed(2)
    live = border_dead()
    mask = (torch.rand(30, 784) < 0.3).float()
    scattered = chance_mask(mask, SHAPE, live)
    kept = (mask.view(30, 28, 28) * live).flatten(1).sum(1)
    assert torch.equal(scattered.sum(1), kept)
    assert scattered.view(30, 28, 28)[:, ~live].sum() == 0


def test_overlap_of_equal_independent_and_opposite_masks():
    torch.manual_seed(3)
    live = border_dead()
    a = (torch.rand(64, 784) < 0.5).float()
    b = (torch.rand(64, 784) < 0.5).float()
    same = seed_overlap(a, a, SHAPE, live)
    assert same == {"kappa": 1.0, "density_correlation": pytest.approx(1.0)}
    independent = seed_overlap(a, b, SHAPE, live)
    assert abs(independent["kappa"]) < 0.05
    p = a.mean().item()  # complementary: never agree, (0 - e) / (1 - e), e = 2 p (1 - p)
    expected = 2 * p * (1 - p)
    assert cohen_kappa(a, 1 - a) == pytest.approx(-expected / (1 - expected))
    # the same pixel preference in two runs with unrelated units: kappa and maps agree
    centre = torch.zeros(28, 28)
    centre[8:20, 8:20] = 0.8
    prefer = (centre + 0.1).flatten()
    c = (torch.rand(64, 784) < prefer).float()
    d = (torch.rand(64, 784) < prefer).float()
    assert density_correlation(c, d, SHAPE, live) > 0.9
    assert seed_overlap(c, d, SHAPE, live)["kappa"] > 0.3


def test_mask_locality_experiment_on_tiny_runs(tmp_path):
    base = {
        "seed": 1,
        "run_dir": "unused",
        "dataset": {"name": "glyphs"},
        "sampler": {"name": "episodic", "options": {"ways": 3, "shots": 1}},
        "backbone": {"name": "omniglot_mlp", "options": {"hidden": [8, 6], "mask_head": True}},
        "objective": {"name": "metaticket", "options": {"warmup": 1}},
        "inner": {"name": "sgd", "options": {"lr": 0.4, "steps": 1, "test_steps": 1}},
        "train": {"iterations": 2, "meta_batch_size": 2, "val_episodes": 0, "test_episodes": 2},
    }
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(base))
    arms = tmp_path / "arms"
    args = ["experiment", "constant-weights", str(config), "--out", str(arms), "--no-progress"]
    variants = "variants=[structured_k1,metaticket_constant_sparse50]"
    assert main([*args, "-x", variants, "-x", "seeds=[1,2]", "-x", "diagnostics_every=0"]) == 0
    out = tmp_path / "locality"
    runs = f"run_dirs=[{arms}/runs/*]"
    args = ["experiment", "mask-locality", str(config), "--out", str(out), "--no-progress"]
    assert main([*args, "-x", runs]) == 0
    with open(out / "mask_locality.csv", newline="") as handle:
        rows = {(r["group"], r["run"].rsplit("-seed", 1)[1]): r for r in csv.DictReader(handle)}
    assert set(rows) == {
        (g, s) for g in ("structured_k1", "metaticket_constant_sparse50") for s in "12"
    }
    assert float(rows["structured_k1", "1"]["locality"]) == 1.0  # built local
    assert float(rows["metaticket_constant_sparse50", "1"]["locality"]) < 0.2
    with open(out / "mask_overlap.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert sorted(p["group"] for p in pairs) == ["metaticket_constant_sparse50", "structured_k1"]
    args[4] = str(tmp_path / "elsewhere")
    assert main([*args, "-x", "run_dirs=[nowhere]"]) == 2  # bad input, named


def test_groups_drop_the_seed_and_may_carry_the_experiment():
    from pathlib import Path

    from fewmask.experiments.locality import group_name

    run = Path("out/cw-causes/runs/metaticket_constant_sparse50-seed12")
    assert group_name(run) == "metaticket_constant_sparse50"
    assert group_name(run, with_experiment=True) == "cw-causes/metaticket_constant_sparse50"
