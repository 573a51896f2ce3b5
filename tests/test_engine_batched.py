"""The batched engine (``EngineOptions.batched``, ``train.engine: batched``) in float64.

Loss, metrics and every meta-gradient must equal the exact engine's and the independent
per-task loop's (:func:`fewmask.testing.reference_meta_gradient`) to 1e-12 relative, with
BatchNorm in every model, for MAML, first-order MAML, Meta-ticket, IteRand and the ANIL / BOIL
rate policies; models the batching does not cover must fall back, and say so once.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import fewmask.engine.batchnorm
from fewmask import Engine, EngineOptions, FewmaskWarning, TrainConfig, Trainer, create
from fewmask.testing import (
    functional_forward,
    make_dataset,
    random_episodes,
    reference_meta_gradient,
)

WAYS, LR, STEPS, TASKS = 3, 0.4, 2, 3
MODELS = {
    "omniglot_mlp": ({"hidden": [6, 5]}, (1, 3, 3)),
    "conv4": ({"channels": 3}, (2, 16, 16)),
    "resnet12": ({"channels": [2, 3, 3, 4]}, (2, 16, 16)),
}
BATCHED = EngineOptions(batched=True)
TOL = 1e-12


def masker_for(algorithm: str):
    if algorithm == "maml":
        return create("masker", "dense")
    pytest.importorskip("fewmask_plugin_metaticket")
    if algorithm == "iterand":
        pytest.importorskip("fewmask_plugin_iterand")
        base = {"name": "metaticket", "options": {"init_sparsity": 0.5}}
        return create("masker", "iterand", {"base": base, "period": 1, "rate": 0.5})
    return create("masker", "metaticket", {"init_sparsity": 0.5})


def build(model, algorithm="maml", inner_name="sgd", first_order=False, options=BATCHED):
    """An engine over a tiny float64 model, and its random episodes."""
    if inner_name != "sgd":
        pytest.importorskip("fewmask_plugin_lrpolicies")
    model_options, shape = MODELS[model]
    torch.manual_seed(3)
    backbone = create("backbone", model, model_options, input_shape=shape, num_classes=WAYS)
    masker = masker_for(algorithm)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create(
        "inner_optimizer", inner_name, {"lr": LR, "steps": STEPS, "first_order": first_order}
    )
    objective = create("objective", "maml" if algorithm == "maml" else "metaticket")
    engine = Engine(backbone, masker, inner, objective, options)
    g = torch.Generator().manual_seed(11)
    return engine, random_episodes(TASKS, WAYS, 2, 3, shape, g, dtype=torch.float64)


def loop_gradient(engine, episodes) -> list[torch.Tensor]:
    plan = engine.inner.plain_sgd(training=True)
    return reference_meta_gradient(
        functional_forward(engine.backbone),
        dict(engine.backbone.named_parameters()),
        engine.masker.masks,
        episodes,
        plan.rates,
        plan.steps,
        list(engine.meta_params.values()),
        first_order=not plan.create_graph,
    )


def relative(got, want) -> float:
    got = torch.cat([g.flatten() for g in got])
    want = torch.cat([w.flatten() for w in want])
    return ((got - want).norm() / want.norm()).item()


def assert_batched_matches(engine, episodes):
    """Batched step == exact engine step == per-task loop, in loss, metrics and gradients."""
    assert engine.batched, "the batched path must apply here"
    exact = Engine(engine.backbone, engine.masker, engine.inner, engine.objective)
    got, want = engine.meta_step(episodes), exact.meta_step(episodes)
    assert set(got.grads) == set(want.grads) and got.grads
    zeros = {n: torch.zeros_like(p) for n, p in engine.meta_params.items()}
    grads = [got.grads.get(n, z) for n, z in zeros.items()]
    exact_grads = [want.grads.get(n, z) for n, z in zeros.items()]
    assert relative(grads, exact_grads) < TOL
    assert relative(grads, loop_gradient(engine, episodes)) < TOL
    scale = torch.cat([g.flatten() for g in exact_grads]).norm()
    for name, g, w in zip(zeros, grads, exact_grads):  # every tensor, against the whole's size
        assert ((g - w).norm() / scale).item() < TOL, name
    assert abs(got.loss - want.loss).item() <= TOL * want.loss.abs().item()
    assert got.metrics.keys() == want.metrics.keys() == {"accuracy"}
    assert all(torch.equal(got.metrics[k], want.metrics[k]) for k in got.metrics)


@pytest.fixture(autouse=True)
def fused_batchnorm_everywhere(monkeypatch):
    monkeypatch.setattr(fewmask.engine.batchnorm, "MIN_NUMEL", 0)


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_batched_step_equals_exact_and_loop(model, algorithm):
    assert_batched_matches(*build(model, algorithm))


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", ["omniglot_mlp", "conv4"])
def test_batched_first_order_equals_exact_and_loop(model, algorithm):
    assert_batched_matches(*build(model, algorithm, first_order=True))


@pytest.mark.parametrize("inner_name", ["anil", "boil"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", ["omniglot_mlp", "resnet12"])
def test_batched_rate_policies_equal_exact_and_loop(model, algorithm, inner_name):
    assert_batched_matches(*build(model, algorithm, inner_name))


@pytest.mark.parametrize("model", ["omniglot_mlp", "conv4"])
def test_batched_iterand_equals_exact_and_loop(model):
    engine, episodes = build(model, "iterand")
    assert_batched_matches(engine, episodes)
    engine.masker.on_outer_step(0, engine.backbone)  # re-draws pruned weights in place
    assert engine.masker.events == 1
    assert_batched_matches(engine, episodes)


def test_batched_with_the_fused_batchnorm_equals_exact():
    engine, episodes = build("conv4", "metaticket", options=EngineOptions.batched_path())
    assert_batched_matches(engine, episodes)


def test_one_task_and_uneven_batches():
    engine, episodes = build("omniglot_mlp", "metaticket")
    assert_batched_matches(engine, episodes[:1])
    assert_batched_matches(engine, episodes[:2])


def fallback_messages(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FewmaskWarning)]


def test_unsupported_model_falls_back_and_says_so_once():
    torch.manual_seed(0)
    options = {"depth": 10, "widen_factor": 1}
    backbone = create("backbone", "wrn28_10", options, input_shape=(2, 8, 8), num_classes=WAYS)
    backbone.double()
    masker = create("masker", "dense")
    masker.attach(backbone)
    inner = create("inner_optimizer", "sgd", {"lr": LR})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = Engine(backbone, masker, inner, create("objective", "maml"), BATCHED)
        eps = random_episodes(2, WAYS, 1, 2, (2, 8, 8), torch.Generator(), dtype=torch.float64)
        got = engine.meta_step(eps)
        engine.meta_step(eps)
    messages = fallback_messages(caught)
    assert len(messages) == 1 and "WideResNet" in messages[0], messages
    assert not engine.batched
    exact = Engine(backbone, masker, inner, create("objective", "maml")).meta_step(eps)
    assert all(torch.equal(got.grads[n], exact.grads[n]) for n in exact.grads)


def test_checkpointed_blocks_and_several_rates_fall_back():
    torch.manual_seed(0)
    options = {"channels": 3, "checkpoint_blocks": True}
    backbone = create("backbone", "conv4", options, input_shape=(2, 16, 16), num_classes=WAYS)
    masker = create("masker", "dense")
    masker.attach(backbone)
    with pytest.warns(FewmaskWarning, match="checkpoint_blocks"):
        engine = Engine(
            backbone,
            masker,
            create("inner_optimizer", "sgd"),
            create("objective", "maml"),
            BATCHED,
        )
    assert not engine.batched
    pytest.importorskip("fewmask_plugin_lrpolicies")
    backbone = create(
        "backbone", "conv4", {"channels": 3}, input_shape=(2, 16, 16), num_classes=WAYS
    )
    inner = create("inner_optimizer", "per_layer", {"rates": {"classifier.*": 0.1}})
    with pytest.warns(FewmaskWarning, match="single"):
        engine = Engine(backbone, masker, inner, create("objective", "maml"), BATCHED)
    assert not engine.batched


def test_episodes_of_different_shapes_take_the_unbatched_path_once_said():
    engine, episodes = build("omniglot_mlp", "maml")
    ragged = [
        episodes[0],
        random_episodes(1, WAYS, 1, 2, (1, 3, 3), torch.Generator(), dtype=torch.float64)[0],
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = engine.meta_step(ragged)
        engine.meta_step(ragged)
    assert len(fallback_messages(caught)) == 1
    want = Engine(engine.backbone, engine.masker, engine.inner, engine.objective).meta_step(ragged)
    assert all(torch.equal(got.grads[n], want.grads[n]) for n in want.grads)


def make_trainer(engine: str, algorithm: str) -> Trainer:
    torch.manual_seed(0)
    data = make_dataset(classes=6, per_class=4, shape=(1, 6, 6))
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [8, 4]}, input_shape=(1, 6, 6), num_classes=WAYS
    )
    return Trainer(
        backbone,
        masker_for(algorithm),
        create("inner_optimizer", "sgd", {"lr": LR}),
        # SGD: Adam divides by the gradient's size, which turns the rounding noise of the
        # gradients that are 0 in exact arithmetic (biases before a BatchNorm) into 1e-11 steps
        create("objective", algorithm, {"optimizer": "sgd", "lr": 0.1}),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1, "queries": 2}),
        {"train": data, "test": data},
        TrainConfig(
            iterations=4,
            meta_batch_size=3,
            test_episodes=2,
            progress=False,
            dtype="float64",
            engine=engine,
        ),
    )


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_training_with_the_batched_engine_gives_the_exact_parameters(algorithm):
    runs = {name: make_trainer(name, algorithm) for name in ("exact", "batched")}
    assert runs["batched"].engine.batched and not runs["exact"].engine.batched
    for _ in range(4):
        stats = {name: run.train_step() for name, run in runs.items()}
        assert stats["batched"]["loss"] == pytest.approx(stats["exact"]["loss"], rel=TOL)
    exact, batched = (dict(runs[n].meta_params) for n in ("exact", "batched"))
    assert relative(list(batched.values()), list(exact.values())) < TOL
    start = make_trainer("exact", algorithm).meta_params
    assert relative(list(start.values()), list(exact.values())) > 1e-6, "training moved them"


def test_auto_batches_where_it_applies_and_is_quiet_elsewhere():
    from fewmask.training.trainer import engine_options

    def options_for(model, model_options, shape, inner):
        backbone = create("backbone", model, model_options, input_shape=shape, num_classes=WAYS)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = engine_options("auto", backbone, inner)
            engine = Engine(
                backbone, create("masker", "dense"), inner, create("objective", "maml"), options
            )
        assert not fallback_messages(caught)
        return engine.batched

    sgd = create("inner_optimizer", "sgd", {"lr": LR})
    assert options_for("omniglot_mlp", {"hidden": [6, 5]}, (1, 3, 3), sgd)
    assert not options_for("mlp5", {}, (3, 32, 32), sgd)  # 3.8M parameters: measured slower
    assert not options_for("conv4", {"channels": 3}, (2, 16, 16), sgd)  # measured slower
    wrn = {"depth": 10, "widen_factor": 1}
    assert not options_for("wrn28_10", wrn, (2, 8, 8), sgd)
    pytest.importorskip("fewmask_plugin_lrpolicies")
    rates = create("inner_optimizer", "per_layer", {"rates": {"classifier.*": 0.1}})
    assert not options_for("omniglot_mlp", {"hidden": [6, 5]}, (1, 3, 3), rates)
