"""``fewmask.as_backbone``: any nn.Module as a backbone, checked against the per-task reference.

The reference runs the user's module itself through ``functional_call`` (names without the
wrapper's ``model.`` prefix), so it does not go through the wrapper's forward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import fewmask
from fewmask import ConfigError, Engine, TrainConfig, Trainer, as_backbone, create
from fewmask.errors import FewmaskWarning
from fewmask.testing import ENGINE_PATHS, make_dataset, random_episodes, reference_meta_gradient

WAYS, LR, STEPS = 3, 0.4, 2
SHAPE = (2, 8, 8)
pytestmark = pytest.mark.usefixtures("fused_batchnorm_on_tiny_inputs")


class UserNet(nn.Module):
    """What a researcher writes: default BatchNorm (running statistics), in-place ReLU."""

    def __init__(self, ways: int = WAYS):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(SHAPE[0], 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 5),
            nn.BatchNorm1d(5),
            nn.ReLU(),
        )
        self.out = nn.Linear(5, ways)

    def forward(self, x):
        return self.out(self.body(x))


def wrapped(**kwargs) -> fewmask.WrappedBackbone:
    torch.manual_seed(3)
    return as_backbone(UserNet(), input_shape=SHAPE, **kwargs)


def test_head_maskable_weights_and_batch_statistics():
    backbone = wrapped()
    assert backbone.get_classifier() is backbone.model.out
    assert backbone.num_features == 5 and backbone.num_classes == WAYS
    assert backbone.maskable_parameter_names() == ["model.body.0.weight", "model.body.5.weight"]
    groups = backbone.parameter_groups()
    assert {n for n, g in groups.items() if g == "head"} == {"model.out.weight", "model.out.bias"}
    for norm in (backbone.model.body[1], backbone.model.body[6]):
        assert not norm.track_running_stats and norm.running_mean is None
    assert not any(getattr(m, "inplace", False) for m in backbone.modules())
    assert list(backbone.named_buffers()) == []


def test_features_and_head_split_the_modules_own_forward():
    backbone = wrapped()
    x = torch.randn(6, *SHAPE)
    logits = backbone(x)
    features = backbone.forward_features(x)
    assert features.shape == (6, 5)
    assert torch.equal(backbone.forward_head(features, pre_logits=True), features)
    torch.testing.assert_close(backbone.forward_head(features), logits)
    torch.testing.assert_close(backbone.model(x), logits)  # the flag is off again


def test_reset_classifier_rebuilds_the_head():
    backbone = wrapped().double()
    old = backbone.get_classifier()
    backbone.reset_classifier(7)
    head = backbone.get_classifier()
    assert head is not old and head.out_features == 7 and head.weight.dtype == torch.float64
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    assert backbone(x).shape == (4, 7) and backbone.forward_features(x).shape == (4, 5)
    assert backbone.num_classes == 7
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        backbone.reset_classifier(0)


def test_named_head_in_a_sequential_and_chosen_maskable_weights():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    backbone = as_backbone(net, "3", input_shape=(1, 2, 2), maskable=["1.weight", "3.weight"])
    assert backbone.maskable_parameter_names() == ["model.1.weight", "model.3.weight"]
    backbone.reset_classifier(4)
    assert backbone(torch.randn(3, 1, 2, 2)).shape == (3, 4)


class AfterHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.flatten(1)) * 2


@pytest.mark.parametrize(
    ("module", "kwargs", "message"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten()), {}, "has no nn.Linear"),
        (UserNet(), {"head": "body.1"}, "'body.1' is a BatchNorm2d; the head must be an nn.Li"),
        (UserNet(), {"head": "fc"}, "'fc' is not a submodule"),
        (AfterHead(), {}, "'fc' does not give the module's output"),
        (UserNet(), {"maskable": ["body.9.weight"]}, "body.9.weight is not a parameter"),
    ],
)
def test_bad_modules_are_config_errors(module, kwargs, message):
    shape = (1, 2, 2) if isinstance(module, (AfterHead, nn.Sequential)) else SHAPE
    with pytest.raises(ConfigError, match=message):
        as_backbone(module, input_shape=shape, **kwargs)


def test_wrong_input_shape_is_a_config_error():
    with pytest.raises(ConfigError, match=r"failed on a batch of input_shape \(1, 8, 8\)"):
        as_backbone(UserNet(), input_shape=(1, 8, 8))


def test_a_backbone_is_not_wrapped_again():
    with pytest.raises(TypeError, match="already a Backbone"):
        as_backbone(wrapped(), input_shape=SHAPE)


# ---------------------------------------------------------------- float64 meta-gradients
def build(algorithm: str):
    backbone = wrapped()
    masker = create(
        "masker",
        "metaticket" if algorithm == "metaticket" else "dense",
        {"init_sparsity": 0.5} if algorithm == "metaticket" else None,
    )
    masker.attach(backbone)
    backbone.double()
    masker.double()
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": STEPS})
    inner.attach(backbone)
    meta = dict(backbone.named_parameters()) if algorithm == "maml" else masker.meta_parameters()
    g = torch.Generator().manual_seed(11)
    episodes = random_episodes(2, WAYS, 2, 3, SHAPE, g, dtype=torch.float64)
    return backbone, masker, inner, meta, episodes


def module_forward(module: nn.Module):
    """The user's module with ``model.``-prefixed parameters, masked, without the wrapper."""

    def forward(params, masks, x):
        masks = masks or {}
        own = {n[len("model.") :]: p * masks[n] if n in masks else p for n, p in params.items()}
        return functional_call(module, own, (x,))

    return forward


class Targets(fewmask.MetaObjective):
    def __init__(self, meta):
        self.meta = meta

    def meta_parameters(self, backbone, masker):
        return self.meta

    def build_optimizer(self, params):
        return torch.optim.SGD(params, lr=1.0)

    def build_scheduler(self, optimizer, total_iterations):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0)


@pytest.mark.parametrize("path", ENGINE_PATHS)
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_meta_gradient_matches_per_task_reference(algorithm, path):
    if algorithm == "metaticket":
        pytest.importorskip("fewmask_plugin_metaticket")
    backbone, masker, inner, meta, episodes = build(algorithm)
    params = dict(backbone.named_parameters())
    want = reference_meta_gradient(
        module_forward(backbone.model),
        params,
        masker.masks,
        episodes,
        dict.fromkeys(params, LR),
        STEPS,
        list(meta.values()),
    )
    if path == "batched":  # a wrapped module is not known to keep tasks apart: said, then exact
        with pytest.warns(FewmaskWarning, match="batched engine: .*unbatched path"):
            engine = Engine(backbone, masker, inner, Targets(meta), ENGINE_PATHS[path])
    else:
        engine = Engine(backbone, masker, inner, Targets(meta), ENGINE_PATHS[path])
    grads = engine.meta_step(episodes).grads
    got = [grads.get(n, torch.zeros_like(p)) for n, p in meta.items()]
    got, want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    assert want.norm() > 0
    assert ((got - want).norm() / want.norm()).item() < 1e-10


# ---------------------------------------------------------------- training
def trainer(masker: str, objective: str, engine: str = "exact", inner: str = "sgd") -> Trainer:
    objective_options = {"warmup": 1} if objective == "metaticket" else None
    return Trainer(
        wrapped(),
        create("masker", masker),
        create("inner_optimizer", inner),
        create("objective", objective, objective_options),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1, "queries": 2}),
        {"train": make_dataset(classes=4, per_class=3, shape=SHAPE)},
        TrainConfig(
            iterations=2, meta_batch_size=2, test_episodes=2, progress=False, engine=engine
        ),
    )


MLP_ONLY = {"structured"}
"""Maskers made for one kind of network (hand-made 5x5 patches over a flat image: the
constant-weights experiment's MLP), not for any module."""


def masker_objective_pairs() -> list[tuple[str, str]]:
    """Every registered masker (but :data:`MLP_ONLY`) with every objective that can learn
    with it."""
    pairs = []
    for objective in fewmask.list_components("objective"):
        for masker in sorted(set(fewmask.list_components("masker")) - MLP_ONLY):
            needs_scores = fewmask.default_registry().get("objective", objective).cls.needs_scores
            if not (needs_scores and masker == "dense"):
                pairs.append((masker, objective))
    return pairs


@pytest.mark.parametrize("engine", ["exact", "fast"])
@pytest.mark.parametrize(("masker", "objective"), masker_objective_pairs())
def test_trains_with_every_masker_and_objective(masker, objective, engine):
    run = trainer(masker, objective, engine)
    before = {n: p.detach().clone() for n, p in run.meta_params.items()}
    results = run.fit()
    assert 0.0 <= results["accuracy"] <= 1.0
    assert any(not torch.equal(p, before[n]) for n, p in run.meta_params.items())
    if objective == "metaticket":
        assert set(run.meta_params) == set(run.backbone.maskable_parameter_names())


@pytest.mark.parametrize("inner", fewmask.list_components("inner_optimizer"))
def test_trains_with_every_inner_optimizer(inner):
    """The body/head split (ANIL, BOIL) and per-layer rates come from the wrapped module."""
    run = trainer("metaticket", "metaticket", inner=inner)
    groups = run.backbone.parameter_groups()
    assert {n for n, g in groups.items() if g == "head"} == {"model.out.weight", "model.out.bias"}
    assert 0.0 <= run.fit()["accuracy"] <= 1.0


def test_checkpoint_round_trip(tmp_path):
    run = trainer("dense", "maml")
    run.fit()
    path = run.save(tmp_path / "checkpoint.pt")
    again = trainer("dense", "maml")
    again.resume(path)
    for (name, p), q in zip(run.backbone.named_parameters(), again.backbone.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("objective", ["maml", "metaticket"])
def test_cuda_graph_trains_a_wrapped_module(objective):
    masker = "metaticket" if objective == "metaticket" else "dense"
    run = Trainer(
        wrapped(),
        create("masker", masker),
        create("inner_optimizer", "sgd"),
        create("objective", objective),
        create("sampler", "episodic", {"ways": WAYS, "shots": 1, "queries": 2}),
        {"train": make_dataset(classes=4, per_class=3, shape=SHAPE)},
        TrainConfig(
            iterations=3,
            meta_batch_size=2,
            test_episodes=2,
            progress=False,
            device="cuda",
            engine="fast",
            cuda_graph=True,
        ),
    )
    results = run.fit()
    assert 0.0 <= results["accuracy"] <= 1.0
