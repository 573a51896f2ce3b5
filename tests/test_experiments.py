"""`fewmask experiment NAME CONFIG`: every experiment end to end at a tiny size, its outputs,
the probe's statistic against a hand computation, reuse of finished variants, bad settings."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from fewmask import ConfigError, create
from fewmask.cli import main
from fewmask.experiments.mask_pictures import tile_images
from fewmask.experiments.methods import method_patch
from fewmask.experiments.plots import nice_ticks
from fewmask.experiments.task_gradient import TaskGradientProbe, default_layer
from fewmask.interfaces import Episode
from fewmask.testing import reference_mlp_forward

BASE = {
    "seed": 1,
    "run_dir": "unused",
    "dataset": {"name": "glyphs"},
    "sampler": {"name": "episodic", "options": {"ways": 3, "shots": 1}},
    "backbone": {"name": "omniglot_mlp", "options": {"hidden": [8, 6]}},
    "objective": {"name": "metaticket", "options": {"warmup": 1}},
    "inner": {"name": "sgd", "options": {"lr": 0.4, "steps": 1, "test_steps": 2}},
    "test_datasets": [{"name": "glyphs", "options": {"set": "heldout"}}],
    "train": {
        "iterations": 2,
        "meta_batch_size": 2,
        "val_episodes": 0,
        "test_episodes": 4,
        "progress": False,
    },
}


@pytest.fixture
def base_config(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run(name, config, out, *settings, overrides=()):
    args = ["experiment", name, str(config), "--out", str(out), "--no-progress"]
    for item in settings:
        args += ["-x", item]
    for item in overrides:
        args += ["-o", item]
    return main(args)


def assert_outputs(out, stem, columns, rows, chart=True):
    table = read_csv(out / f"{stem}.csv")
    assert len(table) == rows
    assert set(columns) <= set(table[0])
    assert (out / f"{stem}.md").read_text().startswith(("|", "**", "Acc", "Mean"))
    with Image.open(out / f"{stem}.png") as image:
        assert not chart or (image.width >= 500 and image.height >= 300)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    return table


def test_width_sweep_writes_one_row_per_grid_point(base_config, tmp_path, capsys):
    out = tmp_path / "ws"
    code = run(
        "width-sweep",
        base_config,
        out,
        "methods=[maml,metaticket,metaticket_iterand]",
        "widths=[0.5,1]",
        "ways=[3]",
        "shots=[1,2]",
    )
    assert code == 0
    table = assert_outputs(out, "width_sweep", ["method", "width", "ways", "shots", "accuracy"], 12)
    assert {(r["method"], r["width"], r["shots"]) for r in table} == {
        (m, w, s)
        for m in ("maml", "metaticket", "metaticket_iterand")
        for w in ("0.5", "1.0")
        for s in ("1", "2")
    }
    maml = [r for r in table if r["method"] == "maml"]
    assert all(float(r["sparsity"]) == 0.0 for r in maml)
    assert "| metaticket_iterand |" in capsys.readouterr().out
    # IteRand ran with the period derived from the run length (2 iterations / 30 -> 1)
    saved = yaml.safe_load(
        (out / "runs/metaticket_iterand-width1-3way1shot/config.yaml").read_text()
    )
    assert saved["masker"]["name"] == "iterand" and saved["masker"]["options"]["period"] == 1
    assert saved["backbone"]["options"]["width"] == 1.0 and saved["test_datasets"] == []


def test_finished_variants_are_reused_and_a_changed_config_is_refused(
    base_config, tmp_path, capsys
):
    out = tmp_path / "cw"
    settings = ("seeds=[1]",)
    assert run("constant-weights", base_config, out, *settings) == 0
    checkpoint = out / "runs/metaticket_constant-seed1/checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    first = read_csv(out / "constant_weights.csv")
    assert run("constant-weights", base_config, out, *settings) == 0
    assert checkpoint.stat().st_mtime_ns == stamp  # not trained again
    assert read_csv(out / "constant_weights.csv") == first
    capsys.readouterr()
    assert run("constant-weights", base_config, out, *settings, overrides=["seed=5"]) == 0
    assert run("constant-weights", base_config, out, "seeds=[1]", "control_sparsity=0.25") == 2
    assert "holds a run of a different config" in capsys.readouterr().err


def test_a_moved_output_folder_reuses_its_variants_and_settings_can_grow(base_config, tmp_path):
    """Neither the folder's place, nor logging and checkpoint frequency, nor an option added
    since (at its default) count as a change."""
    out = tmp_path / "cw"
    assert run("constant-weights", base_config, out, "seeds=[1]") == 0
    checkpoint = "runs/metaticket_constant-seed1/checkpoint.pt"
    stamp = (out / checkpoint).stat().st_mtime_ns
    first = read_csv(out / "constant_weights.csv")
    moved = out.rename(tmp_path / "moved")
    saved = moved / "runs/metaticket_constant-seed1/config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["train"]["engine"]  # as written before that option existed: its default counts
    saved.write_text(yaml.safe_dump(older))
    assert run("constant-weights", base_config, moved, "seeds=[1]") == 0
    assert (moved / checkpoint).stat().st_mtime_ns == stamp
    assert read_csv(moved / "constant_weights.csv") == first
    logging = ["train.log_every=7", "train.checkpoint_every=3"]
    assert run("constant-weights", base_config, moved, "seeds=[1,2]", overrides=logging) == 0
    assert (moved / checkpoint).stat().st_mtime_ns == stamp  # only seed 2 was trained
    rows = read_csv(moved / "constant_weights.csv")
    assert [(r["variant"], r["seed"]) for r in rows] == [
        (v, s) for v in ("metaticket_constant", "random_subnetwork") for s in ("1", "2")
    ]
    assert rows[0] == first[0]


def test_constant_weights_uses_constant_weights_and_a_random_half_mask(base_config, tmp_path):
    out = tmp_path / "cw"
    assert run("constant-weights", base_config, out, "seeds=[1,2]") == 0
    table = assert_outputs(out, "constant_weights", ["variant", "seed", "accuracy"], 4)
    control = [r for r in table if r["variant"] == "random_subnetwork"]
    assert all(r["iterations"] == "0" for r in control)  # never meta-trained
    # 8*784, 6*8 and 3*6 weights, each layer pruned at k-1 = round(0.5 (n-1)) entries
    pruned = sum(round(0.5 * (n - 1)) for n in (8 * 784, 6 * 8, 3 * 6))
    assert float(control[0]["sparsity"]) == pytest.approx(pruned / (8 * 784 + 48 + 18))
    state = torch.load(out / "runs/metaticket_constant-seed1/checkpoint.pt", weights_only=False)
    for name in ("features.1.linear.weight", "features.2.linear.weight", "classifier.weight"):
        weight = state["backbone"][name]
        assert torch.allclose(weight, torch.full_like(weight, (2.0 / weight.shape[1]) ** 0.5))


def test_cross_domain_has_every_method_seed_and_domain(base_config, tmp_path):
    out = tmp_path / "cd"
    assert (
        run("cross-domain", base_config, out, "methods=[maml,boil,metaticket]", "seeds=[1,2]") == 0
    )
    table = assert_outputs(out, "cross_domain", ["method", "seed", "dataset", "ci95"], 12)
    assert {r["dataset"] for r in table} == {"own test split", "glyphs:heldout"}
    markdown = (out / "cross_domain.md").read_text()
    for method in ("maml", "boil", "metaticket"):
        rows = [r for r in table if r["method"] == method and r["dataset"] == "glyphs:heldout"]
        values = [float(r["accuracy"]) for r in rows]
        mean = sum(values) / 2
        std = (sum((v - mean) ** 2 for v in values)) ** 0.5  # n - 1 = 1
        assert f"| {method} | " in markdown and f"{100 * mean:.2f} +- {100 * std:.2f}" in markdown


def test_task_gradient_records_one_value_per_iteration(base_config, tmp_path):
    out = tmp_path / "tg"
    assert run("task-gradient", base_config, out, "inner_lrs=[0.2,0.4]", "smooth=1") == 0
    table = assert_outputs(out, "task_gradient", ["method", "inner_lr", "task_gradient"], 8)
    assert all(float(r["task_gradient"]) > 0 for r in table)
    assert sorted({r["iteration"] for r in table}) == ["1", "2"]


def test_mask_pictures_draw_the_first_layer_in_the_input_shape(base_config, tmp_path):
    out = tmp_path / "mp"
    assert run("mask-pictures", base_config, out, "units=4", "scale=1") == 0
    table = assert_outputs(out, "mask_pictures", ["layer", "unit", "kept_fraction"], 8, chart=False)
    assert table[0]["layer"] == "features.1.linear.weight"
    with Image.open(out / "mask_pictures.png") as image:  # 2x2 grid of 28x28, 1 px padding
        assert image.size == (2 * 29 + 1, 2 * 29 + 1)
    run_dir = out / "runs/model"
    finished = (run_dir / "results.json").read_text()
    again = tmp_path / "mp2"
    assert run("mask-pictures", base_config, again, f"run_dir={run_dir}", "units=4", "scale=1") == 0
    assert read_csv(again / "mask_pictures.csv") == table
    assert (run_dir / "results.json").read_text() == finished  # the drawn run is left as it was


def test_mask_pictures_tile_like_torchvision_without_needing_it():
    make_grid = pytest.importorskip("torchvision.utils").make_grid
    generator = torch.Generator().manual_seed(0)
    for shape, nrow in [((5, 1, 4, 3), 2), ((1, 1, 4, 3), 1), ((7, 3, 2, 5), 3), ((3, 3, 2, 2), 8)]:
        images = torch.rand(shape, generator=generator)
        expected = make_grid(images, nrow=nrow, padding=1, pad_value=0.5)
        assert torch.equal(tile_images(images, nrow), expected), shape


def test_probe_statistic_matches_a_hand_computation():
    torch.manual_seed(0)
    shape, ways, lr, steps = (1, 3, 3), 3, 0.3, 2
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [5, 4]}, input_shape=shape, num_classes=ways
    )
    masker = create("masker", "metaticket", {"init_sparsity": 0.4})
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": lr, "steps": steps})
    layer = default_layer(backbone)
    assert layer == "features.2.linear.weight"
    probe = TaskGradientProbe(inner, layer, masker)
    probe.attach(backbone)
    probe.recording = True
    x = torch.randn(2 * ways, *shape, dtype=torch.float64)
    y = torch.arange(ways).repeat(2)
    episode = Episode(x, y, x, y)
    masks = {n: m.detach() for n, m in masker.masks().items()}
    params = {n: p.detach().clone().requires_grad_() for n, p in backbone.named_parameters()}

    def loss_fn(p):
        return F.cross_entropy(reference_mlp_forward(p, masks, episode.support_x), y)

    probe.adapt(params, loss_fn, training=True)

    fast, summed = dict(params), torch.zeros_like(params[layer])
    for _ in range(steps):  # by hand: plain SGD, gradients summed over the steps
        grads = torch.autograd.grad(loss_fn(fast), list(fast.values()))
        summed += grads[list(fast).index(layer)]
        fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads)}
    density = masks[layer].mean()
    assert 0 < density < 1
    kept = summed[masks[layer].bool()]
    assert torch.all(summed[~masks[layer].bool()] == 0)  # pruned weights get no inner gradient
    expected = (summed.abs().mean() / density).item()
    assert expected == pytest.approx(kept.abs().mean().item(), rel=1e-12)
    assert probe.pop_mean() == pytest.approx(expected, rel=1e-9)


def test_method_patches_follow_the_paper_settings():
    base = json.loads(json.dumps(BASE))
    base["masker"] = {"name": "metaticket", "options": {"init_sparsity": 0.2}}
    maml = method_patch("maml", base)
    assert maml["objective"] == {"name": "maml", "options": {"optimizer": "adamw", "lr": 0.001}}
    assert maml["masker"] is None and maml["inner"]["name"] == "sgd"
    assert method_patch("metaticket", base)["objective"] == base["objective"]
    boil = method_patch("metaticket_boil", base)
    assert boil["inner"] == {"name": "boil", "options": base["inner"]["options"]}
    assert boil["masker"] == base["masker"]
    iterand = method_patch("metaticket_iterand", base, iterand_period=7)["masker"]["options"]
    assert iterand == {
        "base": {"name": "metaticket", "options": {"init_sparsity": 0.2}},
        "period": 7,
        "rate": 1.0,
    }


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("width-sweep", "methods=[mamll]", "$.experiment.methods[0]: unknown 'mamll'"),
        ("width-sweep", "widths=wide", "$.experiment.widths"),
        ("task-gradient", "smooth=0", "$.experiment.smooth: must be >= 1"),
        ("cross-domain", "seedz=[1]", "$.experiment: unknown key(s): seedz"),
        ("constant-weights", "variants=[random]", "$.experiment.variants[0]"),
        (
            "mask-pictures",
            "run_dir=/nowhere",
            "$.experiment.run_dir: /nowhere does not exist",
        ),
    ],
)
def test_bad_settings_are_named(base_config, tmp_path, capsys, name, setting, message):
    assert run(name, base_config, tmp_path / "out", setting) == 2
    assert message in capsys.readouterr().err


def test_config_problems_name_the_variant_before_anything_runs(base_config, tmp_path, capsys):
    out = tmp_path / "ws"
    code = run(
        "width-sweep",
        base_config,
        out,
        "widths=[1]",
        "ways=[3]",
        "shots=[1]",
        overrides=["backbone.name=conv4"],
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "variant maml-width1-3way1shot" in err and "width" in err
    assert not (out / "runs").exists()  # nothing was trained
    base = yaml.safe_load(base_config.read_text())
    base["test_datasets"] = []
    base_config.write_text(yaml.safe_dump(base))
    assert run("cross-domain", base_config, out) == 2
    assert "$.test_datasets" in capsys.readouterr().err


def test_nice_ticks_cover_the_range():
    for low, high in [(15.4, 70.6), (0.0, 1.0), (0.013, 0.0139), (5.0, 5.0), (-3.0, 2.0)]:
        ticks = nice_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and len(ticks) >= 2


def test_probe_needs_plain_sgd_steps_on_an_adapted_layer():
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [5, 4]}, input_shape=(1, 3, 3), num_classes=3
    )
    masker = create("masker", "dense")
    layer = default_layer(backbone)
    inner = create("inner_optimizer", "sgd")
    probe = TaskGradientProbe(inner, layer, masker)
    assert probe.plain_sgd(training=True) is None, "the engine must run adapt() through it"
    with pytest.raises(ConfigError, match="plain SGD"):
        TaskGradientProbe(probe, layer, masker).attach(backbone)
    with pytest.raises(ConfigError, match="not adapted"):
        TaskGradientProbe(inner, "no.such.weight", masker).attach(backbone)
