"""Diagnostics of a masked network: participation ratio, mask Hamming distance, the hidden
activations against a hand forward, and the Trainer callback's file (resume included)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fewmask import TrainConfig, Trainer, create
from fewmask.experiments.diagnostics import (
    COLUMNS,
    FILE,
    MaskDiagnostics,
    activation_blocks,
    hidden_activations,
    mean_pairwise_hamming,
    participation_ratio,
    probe_batches,
)
from fewmask.testing import make_dataset, reference_mlp_forward

HIDDEN = ("features.1.linear.weight", "features.2.linear.weight")


def equal_directions(samples: int, dims: int, k: int, seed: int = 0) -> torch.Tensor:
    """``samples`` points spread equally along ``k`` orthonormal directions of R^dims, shifted."""
    g = torch.Generator().manual_seed(seed)
    coefficients = torch.randn(samples, k, generator=g, dtype=torch.float64)
    coefficients = torch.linalg.qr(coefficients - coefficients.mean(0)).Q  # centred, orthonormal
    directions = torch.linalg.qr(torch.randn(dims, k, generator=g, dtype=torch.float64)).Q
    return 3.0 * coefficients @ directions.T + torch.randn(dims, generator=g, dtype=torch.float64)


def test_participation_ratio_of_rank_one_activations_is_one():
    g = torch.Generator().manual_seed(0)
    scale, direction = torch.randn(50, 1, generator=g), torch.rand(1, 16, generator=g)
    acts = scale * direction + torch.rand(16, generator=g)  # one direction plus an offset
    assert participation_ratio(acts) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_participation_ratio_counts_equal_orthogonal_directions(k):
    assert participation_ratio(equal_directions(40, 12, k)) == pytest.approx(k, abs=1e-6)


def test_participation_ratio_without_variance_is_zero():
    assert participation_ratio(torch.full((6, 4), 0.3)) == 0.0
    assert participation_ratio(torch.zeros(5, 3)) == 0.0
    assert participation_ratio(torch.rand(1, 7)) == 0.0  # one sample


def test_participation_ratio_flattens_and_ignores_scale():
    acts = torch.rand(10, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    assert participation_ratio(acts) == pytest.approx(participation_ratio(7 * acts.flatten(1)))
    assert 1.0 <= participation_ratio(acts) <= 9  # at most N - 1 directions


def brute_force_hamming(mask: torch.Tensor) -> float:
    rows = (mask.flatten(1) != 0).tolist()
    pairs = [
        sum(a != b for a, b in zip(rows[i], rows[j])) / len(rows[i])
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
    ]
    return sum(pairs) / len(pairs) if pairs else 0.0


def test_hamming_of_identical_and_complementary_units():
    row = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    assert mean_pairwise_hamming(row.repeat(4, 1)) == 0.0
    assert mean_pairwise_hamming(torch.stack([row, 1 - row])) == 1.0
    assert mean_pairwise_hamming(row[None]) == 0.0  # one unit: no pair
    # three units, two alike: pairs differ by 1, 1 and 0 of the positions
    assert mean_pairwise_hamming(torch.stack([row, 1 - row, row])) == pytest.approx(2 / 3)


@given(
    units=st.integers(1, 7),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    density=st.floats(0, 1),
)
def test_hamming_matches_a_pairwise_loop(units, shape, seed, density):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(units, *shape, generator=g) < density).float()
    assert mean_pairwise_hamming(mask) == pytest.approx(brute_force_hamming(mask), abs=1e-12)


def tiny_mlp(mask_head=False):
    torch.manual_seed(0)
    return create(
        "backbone",
        "omniglot_mlp",
        {"hidden": [8, 6], "mask_head": mask_head},
        input_shape=(1, 5, 5),
        num_classes=3,
    )


def test_hidden_activations_are_the_blocks_outputs_of_the_masked_forward():
    backbone = tiny_mlp(mask_head=True)
    params = dict(backbone.named_parameters())
    g = torch.Generator().manual_seed(2)
    masks = {n: (torch.rand(params[n].shape, generator=g) < 0.6).float() for n in HIDDEN}
    x = torch.rand(7, 1, 5, 5, generator=g)
    acts = hidden_activations(backbone, params, masks, x)
    assert list(acts) == list(HIDDEN)  # the classifier has no hidden activations
    assert [a.shape for a in acts.values()] == [(7, 8), (7, 6)]
    assert not any(a.requires_grad for a in acts.values())
    h = x.flatten(1)
    for name in HIDDEN:  # Linear -> BatchNorm (batch statistics) -> ReLU, by hand
        block = name.rpartition(".linear")[0]
        h = F.linear(h, params[name] * masks[name], params[f"{block}.linear.bias"])
        weight, bias = params[f"{block}.normalize.weight"], params[f"{block}.normalize.bias"]
        h = torch.relu(F.batch_norm(h, None, None, weight, bias, training=True, eps=1e-3))
        torch.testing.assert_close(acts[name], h.detach())
    logits = F.linear(acts[HIDDEN[-1]], params["classifier.weight"], params["classifier.bias"])
    torch.testing.assert_close(logits, reference_mlp_forward(params, masks, x).detach())
    acts_unmasked = hidden_activations(backbone, params, {}, x)[HIDDEN[0]]
    assert not torch.allclose(acts_unmasked, acts[HIDDEN[0]])  # the masks were applied


def test_conv_activations_are_flattened_per_sample():
    backbone = create("backbone", "conv4", {"channels": 3}, input_shape=(1, 16, 16), num_classes=2)
    names = backbone.maskable_parameter_names()
    assert {n: type(b).__name__ for n, b in activation_blocks(backbone).items()} == {
        n: "ConvBlock" for n in names
    }
    acts = hidden_activations(
        backbone, dict(backbone.named_parameters()), {}, torch.rand(4, 1, 16, 16)
    )
    assert [a.shape for a in acts.values()] == [(4, 3 * 8 * 8), (4, 48), (4, 12), (4, 3)]


def make_trainer(run_dir, iterations=4, checkpoint_every=2):
    torch.manual_seed(0)
    data = make_dataset(classes=6, per_class=4, shape=(1, 5, 5))
    return Trainer(
        tiny_mlp(),
        create("masker", "metaticket", {"weight_init": "signed_constant"}),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 0}),
        create("sampler", "episodic", {"ways": 3, "shots": 1, "queries": 2}),
        {"train": data, "val": make_dataset(classes=6, per_class=4, shape=(1, 5, 5), seed=1)},
        TrainConfig(
            iterations=iterations,
            val_episodes=0,
            test_episodes=4,
            checkpoint_every=checkpoint_every,
            log_every=1,
            progress=False,
        ),
        seed=3,
        run_dir=run_dir,
    )


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def diagnosed_fit(trainer, every=1, start=True):
    diagnostics = MaskDiagnostics(probe_batches(trainer), every, trainer.run_dir)
    if start:
        diagnostics.start(trainer)
    return trainer.fit(callbacks=[diagnostics])


def test_the_callback_writes_rows_and_scalars_and_leaves_training_alone(tmp_path):
    trainer = make_trainer(tmp_path / "run", iterations=5)
    probe = probe_batches(trainer)
    assert len(probe) == 4 and probe[0].shape == (3 * 1 + 3 * 2, 1, 5, 5)  # support + query
    torch.testing.assert_close(probe[0], probe_batches(trainer)[0])  # a fixed draw
    results = diagnosed_fit(trainer, every=2)
    rows = read(tmp_path / "run" / FILE)
    assert tuple(rows[0]) == COLUMNS
    layers = list(HIDDEN)  # the classifier is not masked here
    assert [(int(r["iteration"]), r["layer"]) for r in rows] == [
        (it, layer) for it in (0, 2, 4, 5) for layer in layers
    ]
    assert all(float(r["participation_ratio"]) >= 1 for r in rows)
    first = {r["layer"]: r for r in rows[: len(layers)]}
    assert float(first[HIDDEN[0]]["hamming"]) == 0.0  # Meta-ticket starts dense: equal masks
    assert float(rows[-1]["sparsity"]) > 0  # and learns to prune
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    tags = {(m["tag"], m["step"]) for m in logged}
    for it in (0, 2, 4, 5):
        assert (f"diagnostics/participation_ratio/{HIDDEN[1]}", it) in tags
        assert (f"diagnostics/hamming/{HIDDEN[0]}", it) in tags
    assert results == make_trainer(tmp_path / "plain", iterations=5).fit()  # same training


@pytest.mark.parametrize("start", [True, False])
def test_a_resumed_run_drops_the_rows_written_after_its_checkpoint(tmp_path, start):
    full = make_trainer(tmp_path / "full")
    diagnosed_fit(full)
    expected = read(tmp_path / "full" / FILE)
    assert sorted({int(r["iteration"]) for r in expected}) == [0, 1, 2, 3, 4]

    part = make_trainer(tmp_path / "part")
    diagnosed_fit(part)  # to iteration 4; then, as if it crashed just after checkpoint 2:
    (tmp_path / "part" / "checkpoint.pt").unlink()
    with open(tmp_path / "part" / FILE, "a") as handle:
        handle.write("5,features.1.linear.weight,1.2")  # a line cut short by the crash
    resumed = make_trainer(tmp_path / "part")
    resumed.resume(tmp_path / "part" / "checkpoint.prev.pt")
    assert resumed.iteration == 2
    diagnosed_fit(resumed, start=start)
    assert read(tmp_path / "part" / FILE) == expected  # no duplicates, no future rows


def test_a_fresh_start_rewrites_the_file(tmp_path):
    trainer = make_trainer(tmp_path, iterations=2)
    (tmp_path / FILE).write_text(
        "iteration,layer,participation_ratio,hamming,sparsity\n0,x,1,0,0\n"
    )
    diagnosed_fit(trainer, every=0)  # only the rows of iteration 0
    rows = read(tmp_path / FILE)
    assert [r["layer"] for r in rows] == list(HIDDEN)
    assert all(math.isfinite(float(r["hamming"])) for r in rows)
