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
from fewmask.experiments.gradient_probe import (
    Curves,
    TaskGradientProbe,
    classifier_weight,
    default_layer,
    effective_weight,
    head_dispersion,
    resumed_curves,
)
from fewmask.experiments.mask_pictures import tile_images
from fewmask.experiments.methods import method_patch
from fewmask.experiments.plots import nice_ticks
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
    diagnostics = read_csv(out / "constant_weights_diagnostics.csv")  # every 50: at 0 and last
    iterations = {(r["variant"], r["seed"], r["iteration"]) for r in diagnostics}
    assert iterations == {
        *(("metaticket_constant", s, i) for s in ("1", "2") for i in ("0", "2")),
        *(("random_subnetwork", s, "0") for s in ("1", "2")),
    }


CONSTANT_LAYERS = ("features.1.linear.weight", "features.2.linear.weight", "classifier.weight")
SIGNED_GRID = (
    "variants=[metaticket_constant,random_subnetwork,metaticket_signed_constant,"
    "random_subnetwork_signed_constant]"
)


def test_constant_weights_diagnostics_and_the_signed_constant_arm(base_config, tmp_path):
    out = tmp_path / "cw"
    assert run("constant-weights", base_config, out, SIGNED_GRID, "diagnostics_every=1") == 0
    columns = ["variant", "seed", "iteration", "layer", "participation_ratio", "hamming"]
    table = assert_outputs(out, "constant_weights_diagnostics", [*columns, "sparsity"], 24)
    expected = []
    for variant in SIGNED_GRID.partition("[")[2].rstrip("]").split(","):
        trained = not variant.startswith("random_subnetwork")
        for it in ("0", "1", "2") if trained else ("0",):  # every iteration; controls at 0
            expected += [(variant, "1", it, layer) for layer in CONSTANT_LAYERS]
        own = read_csv(out / f"runs/{variant}-seed1/diagnostics.csv")  # the run's own rows
        assert own == [{k: r[k] for k in own[0]} for r in table if r["variant"] == variant]
    assert [(r["variant"], r["seed"], r["iteration"], r["layer"]) for r in table] == expected
    start = {(r["variant"], r["layer"]): r for r in table if r["iteration"] == "0"}
    for layer in CONSTANT_LAYERS[:2]:  # equal positive weights, dense mask: identical units
        assert float(start["metaticket_constant", layer]["participation_ratio"]) == (
            pytest.approx(1.0, abs=1e-6)
        )
        assert float(start["metaticket_constant", layer]["hamming"]) == 0.0
        assert float(start["metaticket_signed_constant", layer]["participation_ratio"]) > 1.5
        assert float(start["random_subnetwork", layer]["hamming"]) > 0.4
    assert start["metaticket_constant", "classifier.weight"]["participation_ratio"] == ""
    summary = (out / "constant_weights.md").read_text()
    assert "PR (final, per layer)" in summary and " / " in summary
    state = torch.load(
        out / "runs/metaticket_signed_constant-seed1/checkpoint.pt", weights_only=False
    )
    for name in CONSTANT_LAYERS:  # sign(N(0, 1)) sqrt(2 / fan_in)
        weight = state["backbone"][name]
        size = (2.0 / weight.shape[1]) ** 0.5
        assert torch.allclose(weight.abs(), torch.full_like(weight, size))
        assert (weight > 0).any() and (weight < 0).any()
    listed = json.loads((out / ".fewmask-experiment.json").read_text())["outputs"]
    assert "runs/random_subnetwork-seed1/diagnostics.csv" in listed  # so --force removes it
    assert "constant_weights_diagnostics.png" in listed


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
    columns = ["method", "inner_lr", "task_gradient", "head_dispersion"]
    table = assert_outputs(out, "task_gradient", columns, 12)  # maml, metaticket, anil
    assert {r["method"] for r in table} == {"maml", "metaticket", "anil"}
    assert all(float(r["task_gradient"]) > 0 for r in table)
    assert all(float(r["head_dispersion"]) > 0 for r in table)
    assert sorted({r["iteration"] for r in table}) == ["1", "2"]
    assert "head dispersion first 10%" in (out / "task_gradient.md").read_text()
    assert not list(out.glob("runs/*/task_gradient.partial.json"))  # finished: final files only


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
            "constant-weights",
            "diagnostics_every=-1",
            "$.experiment.diagnostics_every: must be >= 0",
        ),
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


def test_probe_needs_plain_sgd_steps_and_a_backbone_parameter():
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
    with pytest.raises(ConfigError, match="'features.2.linear.wieght' is not a parameter"):
        TaskGradientProbe(inner, "features.2.linear.wieght", masker).attach(backbone)
    anil = TaskGradientProbe(create("inner_optimizer", "anil"), layer, masker)
    anil.attach(backbone)  # a layer the inner loop leaves alone: the step-0 gradient
    assert anil.lr == 0


# ------------------------------------------------------------ task-gradient: ANIL, head, resume


def probe_setup(inner_name, steps, masker_name="metaticket"):
    """A float64 omniglot_mlp, its masker, the probe over ``inner_name``, an episode, a loss."""
    torch.manual_seed(0)
    shape, ways = (1, 3, 3), 3
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [5, 4]}, input_shape=shape, num_classes=ways
    )
    masker = create("masker", masker_name, {"init_sparsity": 0.4} if masker_name != "dense" else {})
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", inner_name, {"lr": 0.3, "steps": steps})
    probe = TaskGradientProbe(inner, default_layer(backbone), masker)
    probe.attach(backbone)
    x = torch.randn(2 * ways, *shape, dtype=torch.float64)
    y = torch.arange(ways).repeat(2)
    masks = {n: m.detach() for n, m in masker.masks().items()}
    params = {n: p.detach().clone().requires_grad_() for n, p in backbone.named_parameters()}

    def loss_fn(p):
        return F.cross_entropy(reference_mlp_forward(p, masks, x), y)

    return probe, masks, params, loss_fn


def test_anil_probe_records_the_step0_gradient_of_the_unadapted_layer():
    probe, masks, params, loss_fn = probe_setup("anil", steps=2)
    layer = probe.layer
    assert probe.lr == 0  # ANIL adapts only the head
    probe.recording = True
    fast = probe.adapt(params, loss_fn, training=True)
    assert torch.equal(fast[layer], params[layer])  # no inner update of the probed layer

    (grad,) = torch.autograd.grad(loss_fn(params), params[layer])  # by hand: at step 0
    density = masks[layer].mean()
    assert 0 < density < 1 and torch.all(grad[~masks[layer].bool()] == 0)
    expected = (grad.abs().mean() / density).item()
    assert probe.pop_mean() == pytest.approx(expected, rel=1e-12)

    # the meta-gradient through the adapted head is what it is without the probe
    query = loss_fn(fast)
    with_probe = torch.autograd.grad(query, list(params.values()), allow_unused=True)
    plain = probe.base.adapt(params, loss_fn, training=True)
    without = torch.autograd.grad(loss_fn(plain), list(params.values()), allow_unused=True)
    for a, b in zip(with_probe, without):
        assert (a is None and b is None) or torch.equal(a, b)


def test_probe_step0_and_update_gradients_agree_for_one_inner_step():
    probe, _, params, loss_fn = probe_setup("sgd", steps=1, masker_name="dense")
    assert probe.lr == 0.3
    fast = probe.base.adapt(params, loss_fn, training=True)
    update = probe.summed_gradient(params, fast)
    step0 = probe.step0_gradient(params, loss_fn)
    assert update.abs().mean() > 0
    torch.testing.assert_close(update, step0, rtol=1e-9, atol=1e-12)
    assert probe.statistic(update) == pytest.approx(probe.statistic(step0), rel=1e-9)


def test_probe_head_dispersion_matches_a_hand_computation():
    weight = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rows = weight.tolist()
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    spread = [sum((w - m) ** 2 for w, m in zip(row, mean)) for row in rows]
    assert head_dispersion(weight) == pytest.approx((sum(spread) / len(rows)) ** 0.5, rel=1e-12)
    same = torch.tensor([[1.0, -2.0, 0.5]]).repeat(5, 1)
    assert head_dispersion(same) == 0.0
    shifted = weight + torch.randn(6, dtype=torch.float64)  # a common shift changes nothing
    assert head_dispersion(shifted) == pytest.approx(head_dispersion(weight), rel=1e-12)

    backbone = create(
        "backbone",
        "omniglot_mlp",
        {"hidden": [5, 4], "mask_head": True},
        input_shape=(1, 3, 3),
        num_classes=3,
    )
    masker = create("masker", "metaticket", {"init_sparsity": 0.5})
    masker.attach(backbone)
    name = classifier_weight(backbone)
    assert name == "classifier.weight"
    mask = masker.masks()[name]
    assert 0 < mask.mean() < 1
    effective = effective_weight(backbone, masker, name)
    assert torch.equal(effective, backbone.classifier.weight.detach() * mask)


def test_probe_partial_curves_resume_only_up_to_their_checkpoint(tmp_path):
    path = tmp_path / "partial.json"
    assert resumed_curves(path, 0) == Curves()  # no checkpoint: a fresh start
    assert resumed_curves(path, 2) is None  # a checkpoint without values: start over
    path.write_text(
        json.dumps({"iteration": 4, "task_gradient": [1, 2, 3, 4], "head_dispersion": [5, 6, 7, 8]})
    )
    assert resumed_curves(path, 4) == Curves([1, 2, 3, 4], [5, 6, 7, 8])
    assert resumed_curves(path, 2) == Curves([1, 2], [5, 6])  # an older checkpoint: cut off
    assert resumed_curves(path, 6) is None  # a newer checkpoint than the values: start over
    path.write_text("[1, 2")  # cut short
    assert resumed_curves(path, 2) is None


class Interrupted(Exception):
    pass


def test_an_interrupted_probe_resumes_to_the_uninterrupted_values(
    base_config, tmp_path, monkeypatch
):
    from fewmask.experiments import run_experiment
    from fewmask.training.trainer import Trainer

    settings = {"methods": ["maml"], "inner_lrs": [0.4], "smooth": 1}
    options = ["train.iterations=4", "train.checkpoint_every=2"]

    def probe(out):
        rows = run_experiment(
            "task-gradient", base_config, options, settings, out=out, progress=False
        )
        return [(r["iteration"], r["task_gradient"], r["head_dispersion"]) for r in rows]

    whole = probe(tmp_path / "whole")
    assert [r[0] for r in whole] == [1, 2, 3, 4]

    step, steps = Trainer.train_step, []

    def stop_at_three(self, batch=None):
        steps.append(self.iteration + 1)
        if self.iteration == 2:
            raise Interrupted
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", stop_at_three)
    out = tmp_path / "cut"
    with pytest.raises(Interrupted):
        probe(out)
    run_dir = out / "runs" / "maml-innerlr0.4"
    partial = json.loads((run_dir / "task_gradient.partial.json").read_text())
    assert partial["iteration"] == 2 and len(partial["task_gradient"]) == 2
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "results.json").exists()

    def counted(self, batch=None):
        steps.append(self.iteration + 1)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", counted)
    steps.clear()
    assert probe(out) == whole  # the same values, bit for bit
    assert steps == [3, 4]  # resumed at the checkpoint of iteration 2, not started over
    assert not (run_dir / "task_gradient.partial.json").exists()
    saved = json.loads((run_dir / "task_gradient.json").read_text())
    assert saved == {
        "task_gradient": [r[1] for r in whole],
        "head_dispersion": [r[2] for r in whole],
    }

    # a variant finished by an earlier version (a plain list, no head dispersion) is reused
    (run_dir / "task_gradient.json").write_text(json.dumps(saved["task_gradient"]))
    steps.clear()
    assert [r[:2] for r in probe(out)] == [r[:2] for r in whole] and steps == []
    table = read_csv(out / "task_gradient.csv")
    assert [r["head_dispersion"] for r in table] == [""] * 4
    assert "| n/a | n/a | n/a |" in (out / "task_gradient.md").read_text()
    assert (out / "task_gradient.png").is_file()


# the arms that separate the causes of issue 27 (their pieces: test_separated_causes.py)
NO_TEST_DATASETS = ("test_datasets=[]",)
ARMS = (
    "variants=[structured_k1,structured_k16,metaticket_constant_dense_head,"
    "metaticket_constant_sparse50,metaticket_constant_sparse90]"
)


def test_constant_weight_arms_run_and_report(base_config, tmp_path):
    out = tmp_path / "arms"
    status = run("constant-weights", base_config, out, ARMS, "patch=3", overrides=NO_TEST_DATASETS)
    assert status == 0
    rows = {r["variant"]: r for r in read_csv(out / "constant_weights.csv")}
    assert set(rows) == {
        "structured_k1",
        "structured_k16",
        "metaticket_constant_dense_head",
        "metaticket_constant_sparse50",
        "metaticket_constant_sparse90",
    }
    assert rows["structured_k1"]["iterations"] == "0"  # never meta-trained
    assert rows["metaticket_constant_sparse50"]["iterations"] == "2"
    diagnostics = read_csv(out / "constant_weights_diagnostics.csv")
    start = {
        (r["variant"], r["layer"]): float(r["sparsity"])
        for r in diagnostics
        if r["iteration"] == "0"
    }
    # the sparse starts prune their fraction of every masked layer at iteration 0
    assert start["metaticket_constant_sparse90", "features.1.linear.weight"] == pytest.approx(
        0.9, abs=0.01
    )
    assert start["metaticket_constant_sparse50", "classifier.weight"] == pytest.approx(0.5, abs=0.1)
    assert ("metaticket_constant_dense_head", "classifier.weight") not in start
    # structured, 8 hidden units of 784 inputs, 3x3 windows; k=1 in the 6-unit layer
    assert start["structured_k1", "features.1.linear.weight"] == pytest.approx(1 - 9 / 784)
    assert start["structured_k1", "features.2.linear.weight"] == pytest.approx(1 - 1 / 8)
    assert start["structured_k16", "features.2.linear.weight"] == 0.0  # 8 inputs: all kept
    summary = (out / "constant_weights.md").read_text()
    assert "metaticket_constant_dense_head" in summary


def test_task_gradient_runs_the_missing_figure2_cells(base_config, tmp_path):
    out = tmp_path / "tg"
    methods = "methods=[maml_frozen_head,metaticket_learned_head]"
    assert (
        run(
            "task-gradient",
            base_config,
            out,
            methods,
            "inner_lrs=[0.4]",
            overrides=NO_TEST_DATASETS,
        )
        == 0
    )
    rows = read_csv(out / "task_gradient.csv")
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(float(r["head_dispersion"]))
    assert set(by_method) == {"maml_frozen_head", "metaticket_learned_head"}
    frozen = by_method["maml_frozen_head"]
    assert frozen == [frozen[0]] * len(frozen)  # the frozen head's rows never move
    learned = by_method["metaticket_learned_head"]
    assert len(set(learned)) > 1  # the learned head's do
