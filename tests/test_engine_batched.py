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

import fewmask
import fewmask.engine.batched
import fewmask.engine.batchnorm
import fewmask.engine.low_rank
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


UPDATES = {"dense": 0, "low_rank": 10**12}
"""``low_rank.DENSE_COST`` that makes every linear weight take the dense or the low-rank form."""


@pytest.fixture(params=sorted(UPDATES))
def updates(request, monkeypatch):
    monkeypatch.setattr(fewmask.engine.low_rank, "DENSE_COST", UPDATES[request.param])
    return request.param


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket", "iterand"])
def test_low_rank_and_dense_updates_equal_exact_and_loop(updates, algorithm, first_order):
    assert_batched_matches(*build("omniglot_mlp", algorithm, first_order=first_order))


@pytest.mark.parametrize("inner_name", ["anil", "boil"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_low_rank_and_dense_updates_with_rate_policies(updates, algorithm, inner_name):
    assert_batched_matches(*build("omniglot_mlp", algorithm, inner_name))


@pytest.mark.parametrize("model", ["conv4", "resnet12"])
def test_low_rank_classifier_of_conv_models(updates, model):
    assert_batched_matches(*build(model, "metaticket"))


class TwiceApplied(fewmask.Backbone):
    """One square Linear used twice in a forward (its update sums both uses)."""

    task_separable = True

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.num_features = features
        self.flatten = torch.nn.Flatten()
        self.shared = torch.nn.Linear(features, features)
        self.classifier = torch.nn.Linear(features, classes)

    def forward_features(self, x):
        return torch.tanh(self.shared(torch.tanh(self.shared(self.flatten(x)))))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.classifier(x)

    def get_classifier(self):
        return self.classifier

    def reset_classifier(self, num_classes):
        self.classifier = torch.nn.Linear(self.num_features, num_classes)

    def maskable_parameter_names(self):
        return ["shared.weight", "classifier.weight"]


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_a_weight_used_twice_sums_its_uses(updates, algorithm):
    torch.manual_seed(4)
    backbone = TwiceApplied(9, WAYS)
    masker = masker_for(algorithm)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": STEPS})
    objective = create("objective", algorithm)
    engine = Engine(backbone, masker, inner, objective, BATCHED)
    g = torch.Generator().manual_seed(11)
    episodes = random_episodes(TASKS, WAYS, 2, 3, (1, 3, 3), g, dtype=torch.float64)
    assert_batched_matches(engine, episodes)


def test_the_cost_model_picks_low_rank_where_it_has_fewer_operations():
    from fewmask.engine.low_rank import low_rank_layers

    backbone = create("backbone", "omniglot_mlp", {}, input_shape=(1, 28, 28), num_classes=5)
    first = "features.1.linear.weight"
    weights = [n for n, _ in backbone.named_parameters() if n.endswith("linear.weight")]
    # the README job: 5-way 1-shot, 1 query per class, one step: every layer, masked or not
    assert first in low_rank_layers(backbone, weights, 5, 5, 1)
    assert first in low_rank_layers(backbone, [], 5, 5, 1)
    # 5-shot 15 queries: 1,875 support x query pairs; too many for a masked 784x256 layer,
    # still few for an unmasked one (their cost is per in + out, not in x out)
    assert first not in low_rank_layers(backbone, weights, 25, 75, 1)
    assert first in low_rank_layers(backbone, [], 25, 75, 1)
    # more inner steps: more updates to carry through every later forward
    assert first not in low_rank_layers(backbone, weights, 5, 5, 10)


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
    assert options_for("mlp5", {}, (3, 32, 32), sgd)  # meta-step by meta-step (below)
    assert not options_for("conv4", {"channels": 3}, (2, 16, 16), sgd)  # measured slower
    wrn = {"depth": 10, "widen_factor": 1}
    assert not options_for("wrn28_10", wrn, (2, 8, 8), sgd)
    pytest.importorskip("fewmask_plugin_lrpolicies")
    rates = create("inner_optimizer", "per_layer", {"rates": {"classifier.*": 0.1}})
    assert not options_for("omniglot_mlp", {"hidden": [6, 5]}, (1, 3, 3), rates)


def test_auto_batches_a_large_mlp_where_the_low_rank_form_covers_it():
    from fewmask.engine.batched import batching_pays_here

    backbone = create("backbone", "mlp5", {}, input_shape=(3, 32, 32), num_classes=5)
    masked = backbone.maskable_parameter_names()
    g = torch.Generator().manual_seed(0)

    def pays(shots, queries, masked_names):
        episode = random_episodes(1, 5, shots, queries, (3, 32, 32), g)[0]
        return batching_pays_here(backbone, masked_names, episode, 1)

    assert pays(5, 15, [])  # MAML: every layer low-rank (measured 2.0x)
    assert pays(1, 1, masked)  # Meta-ticket, 1-shot 1 query: the masked layers too
    assert not pays(5, 15, masked)  # Meta-ticket at 15 queries: the 3072x1024 layer dense (0.8x)


def test_auto_takes_the_per_task_path_on_the_steps_where_batching_does_not_pay(monkeypatch):
    monkeypatch.setattr(fewmask.engine.batched, "AUTO_MAX_PARAMETERS", 0)  # a "large" MLP
    calls = []
    batched_step = fewmask.engine.batched_meta_gradient
    monkeypatch.setattr(
        fewmask.engine,
        "batched_meta_gradient",
        lambda *args: calls.append(1) or batched_step(*args),
    )
    engine, episodes = build("omniglot_mlp", "metaticket", options=EngineOptions.auto())
    per_task = EngineOptions(fused_batchnorm=True)  # auto's other path
    exact = Engine(engine.backbone, engine.masker, engine.inner, engine.objective, per_task)
    monkeypatch.setattr(fewmask.engine.low_rank, "DENSE_COST", 0)  # nothing low-rank: per task
    got, want = engine.meta_step(episodes), exact.meta_step(episodes)
    assert not calls
    assert all(torch.equal(got.grads[n], want.grads[n]) for n in want.grads)
    engine, episodes = build("omniglot_mlp", "metaticket", options=EngineOptions.auto())
    monkeypatch.setattr(fewmask.engine.low_rank, "DENSE_COST", 10**12)  # all low-rank: batched
    assert_batched_matches(engine, episodes)
    assert calls


def wrapped(kind: str):
    """A user's own module of torch layers, wrapped (:func:`fewmask.as_backbone`)."""
    nn = torch.nn
    if kind == "mlp":
        layers = [nn.Flatten(), nn.Linear(9, 7), nn.BatchNorm1d(7), nn.GELU(), nn.Linear(7, WAYS)]
        return fewmask.as_backbone(nn.Sequential(*layers), input_shape=(1, 3, 3))
    layers = [
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, WAYS),
    ]
    return fewmask.as_backbone(nn.Sequential(*layers), input_shape=(2, 8, 8))


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_a_wrapped_module_of_torch_layers_is_batched_exactly(updates, kind, algorithm):
    torch.manual_seed(5)
    backbone = wrapped(kind)
    masker = masker_for(algorithm)
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": STEPS})
    engine = Engine(backbone, masker, inner, create("objective", algorithm), BATCHED)
    g = torch.Generator().manual_seed(11)
    shape = backbone.input_shape
    episodes = random_episodes(TASKS, WAYS, 2, 3, shape, g, dtype=torch.float64)
    assert_batched_matches(engine, episodes)


def test_a_wrapped_module_with_dropout_or_its_own_layer_falls_back():
    nn = torch.nn

    class Scale(nn.Module):  # a user's layer: the engine cannot know it keeps tasks apart
        def forward(self, x):
            return 2 * x

    for layer in (nn.Dropout(0.1), Scale()):
        model = nn.Sequential(nn.Flatten(), nn.Linear(9, 5), layer, nn.Linear(5, WAYS))
        backbone = fewmask.as_backbone(model, input_shape=(1, 3, 3))
        masker = create("masker", "dense")
        masker.attach(backbone)
        inner = create("inner_optimizer", "sgd", {"lr": LR})
        with pytest.warns(FewmaskWarning, match=type(layer).__name__):
            engine = Engine(backbone, masker, inner, create("objective", "maml"), BATCHED)
        assert not engine.batched
