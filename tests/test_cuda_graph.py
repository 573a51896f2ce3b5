"""``train.cuda_graph``: the whole meta-step captured into a CUDA graph and replayed.

On the CPU: the config refuses it without a CUDA device (naming the field), and
``GraphedMetaStep`` refuses a CPU model. On a GPU (``pytest -m gpu``): training with the graph
gives the parameters eager training gives (float64: to rounding), the graph is captured once
and captured anew when the batch's shapes change, and IteRand's in-place re-randomisation is
seen by the replays.
"""

from __future__ import annotations

import pytest
import torch

from fewmask import ConfigError, Engine, GraphCaptureError, Trainer, create
from fewmask.config import TrainConfig
from fewmask.engine.graphs import GraphedMetaStep
from fewmask.options import structure_config
from fewmask.testing import make_dataset, random_episodes

WAYS, SHAPE = 3, (1, 16, 16)
gpu = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_config_refuses_a_graph_without_cuda():
    with pytest.raises(ConfigError, match=r"cuda_graph: needs a CUDA train.device, got 'cpu'"):
        structure_config(TrainConfig, {"cuda_graph": True, "device": "cpu"}, "$.train")


def test_graphed_step_refuses_a_cpu_model():
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [5]}, input_shape=SHAPE, num_classes=WAYS
    )
    masker = create("masker", "dense")
    masker.attach(backbone)
    engine = Engine(backbone, masker, create("inner_optimizer", "sgd"), create("objective", "maml"))
    episodes = random_episodes(2, WAYS, 1, 2, SHAPE, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="needs a CUDA device; the model is on cpu"):
        GraphedMetaStep(engine)(episodes)


def trainer(masker: str, objective: str, backbone: str, **train) -> Trainer:
    pytest.importorskip("fewmask_plugin_iterand")
    torch.manual_seed(0)
    datasets = {
        split: make_dataset(classes=6, per_class=5, shape=SHAPE, seed=i)
        for i, split in enumerate(("train", "val", "test"))
    }
    options = {"hidden": [8, 6]} if backbone == "omniglot_mlp" else {"channels": 3}
    masker_options = {"period": 2, "rate": 0.5} if masker == "iterand" else {}
    config = TrainConfig(
        iterations=4,
        meta_batch_size=2,
        val_episodes=0,
        test_episodes=2,
        progress=False,
        device="cuda",
        dtype="float64",
        **train,
    )
    return Trainer(
        create("backbone", backbone, options, input_shape=SHAPE, num_classes=WAYS),
        create("masker", masker, masker_options),
        create("inner_optimizer", "sgd", {"lr": 0.4}),
        create("objective", objective, {"warmup": 1} if objective == "metaticket" else {}),
        create("sampler", "episodic", {"ways": WAYS, "shots": 2, "queries": 2}),
        datasets,
        config,
    )


@gpu
@cuda
@pytest.mark.parametrize(
    "masker, objective, backbone",
    [
        ("dense", "maml", "omniglot_mlp"),
        ("metaticket", "metaticket", "omniglot_mlp"),
        ("iterand", "metaticket", "omniglot_mlp"),
        ("metaticket", "metaticket", "conv4"),
    ],
)
@pytest.mark.parametrize("data_on_device", [False, True])
@pytest.mark.parametrize("engine", ["exact", "fast"])
def test_graphed_training_equals_eager(masker, objective, backbone, data_on_device, engine):
    # one after the other: IteRand draws from the global RNG, which trainer() seeds
    eager = trainer(masker, objective, backbone, engine=engine, data_on_device=data_on_device)
    want = [eager.train_step() for _ in range(4)]
    graphed = trainer(
        masker, objective, backbone, engine=engine, data_on_device=data_on_device, cuda_graph=True
    )
    got = [graphed.train_step() for _ in range(4)]
    for got_stats, want_stats in zip(got, want):
        assert got_stats == pytest.approx(want_stats, rel=1e-9, abs=1e-12)
    assert graphed._meta_step.captures == 1
    for name, value in eager.backbone.state_dict().items():
        torch.testing.assert_close(graphed.backbone.state_dict()[name], value)
    for name, value in eager.masker.state_dict().items():
        torch.testing.assert_close(graphed.masker.state_dict()[name], value)


@gpu
@cuda
def test_a_batch_of_other_shapes_is_captured_anew():
    run = trainer("metaticket", "metaticket", "omniglot_mlp", cuda_graph=True)
    run.train_step()
    run.train_step()
    other = random_episodes(3, WAYS, 1, 3, SHAPE, torch.Generator().manual_seed(2))
    stats = run.train_step(other)
    assert run._meta_step.captures == 2 and stats["loss"] > 0


class HostReadingEngine:
    """A stand-in engine whose step reads a value on the host, which a graph cannot hold."""

    def __init__(self):
        self.backbone = torch.nn.Linear(2, 2).cuda()

    def meta_step(self, episodes):
        return (self.backbone.weight.sum() * 2).item()


@gpu
@cuda
def test_a_step_that_reads_the_host_is_named_when_capture_fails():
    episodes = random_episodes(1, WAYS, 1, 1, SHAPE, torch.Generator().manual_seed(0))
    step = GraphedMetaStep(HostReadingEngine())
    with pytest.raises(GraphCaptureError, match="train.cuda_graph: the meta-step could not"):
        step(episodes)
    assert step.captures == 0
