"""The CUDA tests (``pytest -m gpu``; skipped without a GPU). ``benchmarks/gpu_check.py`` runs them.

- every engine path against the per-task reference loop, in float64 on the GPU;
- activation checkpointing (``checkpoint_blocks``) exact on the GPU;
- a Trainer on the GPU with its dataset held there: training, checkpoint, resume;
- no host synchronisation inside ``Engine.meta_step`` (``torch.cuda.set_sync_debug_mode``),
  one per ``Trainer.train_step``;
- a dataset held on the GPU gives the same episodes as on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from fewmask import Engine, EngineOptions, Episode, Trainer, create
from fewmask.config import TrainConfig
from fewmask.testing import (
    ENGINE_PATHS,
    engine_gradient,
    make_dataset,
    random_episodes,
    reference_engine_gradient,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("fused_batchnorm_on_tiny_inputs"),
]

WAYS, LR, STEPS, SHAPE = 3, 0.4, 2, (3, 16, 16)
MODELS = {
    "omniglot_mlp": {"hidden": [6, 5]},
    "conv4": {"channels": 3},
    "resnet12": {"channels": [2, 3, 3, 4]},
    "wrn28_10": {"depth": 10, "widen_factor": 1},
}


def episodes(count=2, dtype=torch.float64, device="cuda") -> list[Episode]:
    g = torch.Generator().manual_seed(11)
    return [e.to(device, dtype) for e in random_episodes(count, WAYS, 2, 3, SHAPE, g, dtype=dtype)]


def build(model, algorithm, options=None, dtype=torch.float64, **backbone_options):
    pytest.importorskip("fewmask_plugin_metaticket")
    torch.manual_seed(3)
    config = {**MODELS[model], **backbone_options}
    backbone = create("backbone", model, config, input_shape=SHAPE, num_classes=WAYS)
    masker = create("masker", algorithm if algorithm == "metaticket" else "dense")
    masker.attach(backbone)
    backbone.to("cuda", dtype)
    masker.to("cuda", dtype)
    inner = create("inner_optimizer", "sgd", {"lr": LR, "steps": STEPS})
    return Engine(backbone, masker, inner, create("objective", algorithm), options)


def relative(got, want) -> float:
    got, want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("path", ENGINE_PATHS)
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_engine_path_matches_per_task_loop_on_cuda(model, algorithm, path):
    engine = build(model, algorithm, ENGINE_PATHS[path])
    eps = episodes()
    want = reference_engine_gradient(engine, eps, LR, STEPS)
    assert relative(engine_gradient(engine, eps), want) < 1e-10


@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", ["conv4", "resnet12", "wrn28_10"])
def test_checkpointed_blocks_are_exact_on_cuda(model, algorithm):
    eps = episodes()
    plain = engine_gradient(build(model, algorithm), eps)
    checked = engine_gradient(build(model, algorithm, checkpoint_blocks=True), eps)
    assert relative(checked, plain) < 1e-10


@contextmanager
def sync_debug(mode: str) -> Iterator[list[str]]:
    """``torch.cuda.set_sync_debug_mode(mode)``; with "warn", the warnings are collected."""
    torch.cuda.synchronize()
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(mode)
        try:
            yield seen
        finally:
            torch.cuda.set_sync_debug_mode("default")
    seen += [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize("path", ["exact", "fast"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", ["omniglot_mlp", "conv4", "resnet12"])
def test_meta_step_does_not_synchronise(model, algorithm, path):
    engine = build(model, algorithm, ENGINE_PATHS[path], dtype=torch.float32)
    eps = episodes(dtype=torch.float32)
    engine.meta_step(eps)  # warm-up: cuBLAS/cuDNN handles, allocator
    with sync_debug("error"):
        result = engine.meta_step(eps)
    assert torch.isfinite(result.loss)


def test_meta_step_on_cpu_uint8_episodes_does_not_synchronise():
    engine = build("conv4", "metaticket", EngineOptions.fast(), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * WAYS, *SHAPE), generator=g, dtype=torch.uint8)
    labels = torch.arange(WAYS).repeat(2)
    eps = [Episode(images, labels, images, labels)] * 2
    engine.meta_step(eps)
    with sync_debug("error"):
        engine.meta_step(eps)


def trainer(tmp_path=None, algorithm="maml", engine="exact", iterations=4, **train) -> Trainer:
    pytest.importorskip("fewmask_plugin_metaticket")
    torch.manual_seed(0)
    datasets = {
        split: make_dataset(classes=6, per_class=5, shape=SHAPE, seed=i)
        for i, split in enumerate(("train", "val", "test"))
    }
    backbone = create("backbone", "conv4", MODELS["conv4"], input_shape=SHAPE, num_classes=WAYS)
    config = TrainConfig(
        iterations=iterations,
        meta_batch_size=2,
        val_every=2,
        val_episodes=3,
        test_episodes=5,
        checkpoint_every=2,
        progress=False,
        device="cuda",
        engine=engine,
        data_on_device=True,
        **train,
    )
    return Trainer(
        backbone,
        create("masker", "metaticket" if algorithm == "metaticket" else "dense"),
        create("inner_optimizer", "sgd", {"lr": LR}),
        create("objective", algorithm),
        create("sampler", "episodic", {"ways": WAYS, "shots": 2, "queries": 2}),
        datasets,
        config,
        run_dir=tmp_path,
    )


@pytest.mark.parametrize("engine", ["exact", "fast"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_train_step_synchronises_once(algorithm, engine):
    run = trainer(algorithm=algorithm, engine=engine)
    assert run.datasets["train"].images.device.type == "cuda"
    run.train_step()  # warm-up
    with sync_debug("warn") as syncs:
        run.train_step()
    assert len(syncs) <= 1, syncs


def test_training_checkpoint_and_resume_on_cuda(tmp_path):
    whole = trainer(tmp_path / "whole", dtype="float64")
    results = whole.fit()
    assert 0 <= results["accuracy"] <= 1
    assert whole.state_dict()["cuda_rng"]
    half = trainer(tmp_path / "half", iterations=2, dtype="float64")
    half.fit()
    resumed = trainer(tmp_path / "half", dtype="float64")
    resumed.resume()
    assert resumed.iteration == 2
    resumed.fit()
    for name, value in whole.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value)


def test_dataset_on_the_gpu_gives_the_same_episodes():
    dataset = make_dataset(classes=7, per_class=6, shape=SHAPE)
    sampler = create("sampler", "episodic", {"ways": WAYS, "shots": 2, "queries": 3})
    on_cpu = sampler.sample_many(dataset, torch.Generator().manual_seed(4), 5)
    on_gpu = sampler.sample_many(dataset.to("cuda"), torch.Generator().manual_seed(4), 5)
    for a, b in zip(on_cpu, on_gpu):
        assert all(t.device.type == "cuda" for t in b)
        assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b))
