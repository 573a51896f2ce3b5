"""The meta-iteration never waits for the device (ready for graph capture, issue 14).

``Engine.meta_step`` reads no tensor value on the host: no ``.item()``, no ``bool(tensor)``
branch, no data-dependent shape. ``Trainer.train_step`` reads the host once per iteration,
after the meta-step (loss, metrics and whether every gradient is finite, in one ``tolist``).
On the CPU nothing synchronises, so a guard makes every Python-level host read of a tensor
raise (or counts it); ``tests/test_cuda.py`` checks the same on a GPU with
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import fewmask.engine.batchnorm
from fewmask import Engine, EngineOptions, Episode, FewmaskWarning, Trainer, create
from fewmask.config import TrainConfig
from fewmask.testing import make_dataset

WAYS, SHAPE = 3, (3, 16, 16)
TINY = {
    "omniglot_mlp": {"hidden": [6, 5]},
    "conv4": {"channels": 3},
    "resnet12": {"channels": [2, 3, 3, 4]},
    "wrn28_10": {"depth": 10, "widen_factor": 1, "checkpoint_blocks": True},
}
TENSOR_READS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "nonzero",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__array__",
)
TORCH_READS = ("nonzero", "masked_select", "unique", "is_nonzero", "equal", "allclose")


class HostRead(AssertionError):
    """A tensor's value was read on the host where none may be."""


@contextmanager
def host_reads(record: list[str] | None = None) -> Iterator[None]:
    """Every Python-level host read of a tensor raises :class:`HostRead`; with ``record``, the
    reads made by fewmask's (or a plugin's) own code are appended to it and allowed instead."""

    def guard(owner, name):
        original = getattr(owner, name)

        def read(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if record is None:
                raise HostRead(f"{name} called from {caller}")
            if caller.startswith("fewmask"):
                record.append(f"{name} from {caller}")
            return original(*args, **kwargs)

        return read

    with pytest.MonkeyPatch.context() as patch:
        for name in TENSOR_READS:
            patch.setattr(torch.Tensor, name, guard(torch.Tensor, name))
        for name in TORCH_READS:
            patch.setattr(torch, name, guard(torch, name))
        yield


def test_the_guard_catches_host_reads():
    x = torch.ones(3)
    with host_reads(), pytest.raises(HostRead, match="item"):
        x.sum().item()
    with host_reads(), pytest.raises(HostRead, match="__bool__"):
        if x.sum() > 0:
            pass
    with host_reads(), pytest.raises(HostRead, match="nonzero"):
        x.nonzero()  # a data-dependent shape
    reads: list[str] = []
    with host_reads(reads):
        assert x.sum().tolist() == 3.0  # a read from here (not fewmask code) is not recorded
    assert reads == []


def episodes(count=2, dtype=torch.float32) -> list[Episode]:
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(WAYS)

    def images(n):
        return torch.rand(n * WAYS, *SHAPE, generator=g, dtype=dtype)

    return [
        Episode(images(2), labels.repeat_interleave(2), images(3), labels.repeat_interleave(3))
        for _ in range(count)
    ]


def engine(model: str, algorithm: str, options: EngineOptions | None, inner: str = "sgd"):
    pytest.importorskip("fewmask_plugin_metaticket")
    if inner != "sgd":
        pytest.importorskip("fewmask_plugin_lrpolicies")
    torch.manual_seed(0)
    backbone = create("backbone", model, TINY[model], input_shape=SHAPE, num_classes=WAYS)
    masker = create("masker", "metaticket" if algorithm == "metaticket" else "dense")
    masker.attach(backbone)
    inner_optimizer = create("inner_optimizer", inner, {"lr": 0.4, "steps": 2})
    objective = create("objective", algorithm)
    return Engine(backbone, masker, inner_optimizer, objective, options)


@pytest.mark.parametrize("path", ["exact", "fast", "batched"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
@pytest.mark.parametrize("model", sorted(TINY))
def test_meta_step_reads_nothing_on_the_host(model, algorithm, path, monkeypatch):
    monkeypatch.setattr(fewmask.engine.batchnorm, "MIN_NUMEL", 0)  # the fused BatchNorm too
    options = {"exact": None, "fast": EngineOptions.fast()}.get(path, EngineOptions.batched_path())
    if path == "batched" and model == "wrn28_10":  # not batched: it falls back, and says so
        with pytest.warns(FewmaskWarning, match="unbatched"):
            step = engine(model, algorithm, options)
    else:
        step = engine(model, algorithm, options)
    batch = episodes()
    want = step.meta_step(batch)
    with host_reads():
        got = step.meta_step(batch)
    assert got.grads.keys() == want.grads.keys() and got.grads
    assert all(torch.equal(got.grads[n], want.grads[n]) for n in want.grads)
    assert torch.equal(got.loss, want.loss)


@pytest.mark.parametrize("inner", ["boil", "anil"])
def test_fused_path_of_rate_policies_reads_nothing_on_the_host(inner):
    step = engine("conv4", "metaticket", EngineOptions.fast(), inner)
    with host_reads():
        result = step.meta_step(episodes())
    assert result.grads


def test_first_order_meta_step_reads_nothing_on_the_host():
    step = engine("conv4", "maml", EngineOptions.fast())
    step.inner = create("inner_optimizer", "sgd", {"lr": 0.4, "first_order": True})
    step.inner.attach(step.backbone)
    with host_reads():
        assert step.meta_step(episodes()).grads


def trainer(algorithm: str, engine_name: str, **train) -> Trainer:
    pytest.importorskip("fewmask_plugin_metaticket")
    torch.manual_seed(0)
    dataset = make_dataset(classes=6, per_class=5, shape=SHAPE)
    sampler = create("sampler", "episodic", {"ways": WAYS, "shots": 2, "queries": 2})
    backbone = create("backbone", "conv4", TINY["conv4"], input_shape=SHAPE, num_classes=WAYS)
    masker = create("masker", "metaticket" if algorithm == "metaticket" else "dense")
    config = TrainConfig(iterations=5, meta_batch_size=2, engine=engine_name, **train)
    return Trainer(
        backbone,
        masker,
        create("inner_optimizer", "sgd", {"lr": 0.4}),
        create("objective", algorithm),
        sampler,
        {"train": dataset},
        config,
    )


@pytest.mark.parametrize("engine_name", ["exact", "fast", "batched"])
@pytest.mark.parametrize("algorithm", ["maml", "metaticket"])
def test_train_step_reads_the_host_once(algorithm, engine_name):
    run = trainer(algorithm, engine_name)
    run.train_step()  # the sampler builds its class index on the first draw
    batch = run.sampler.sample_many(run.datasets["train"], run.generator, 2)
    reads: list[str] = []
    with host_reads(reads):
        stats = run.train_step(batch)
    assert reads == ["tolist from fewmask.training.trainer"], reads
    assert set(stats) == {"loss", "accuracy"} and all(type(v) is float for v in stats.values())


class _InfGradient(torch.autograd.Function):
    """Zero forward, infinite backward: a finite loss with non-finite gradients."""

    @staticmethod
    def forward(ctx, x):
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def test_train_step_still_stops_on_a_non_finite_loss_or_gradient():
    from fewmask.errors import NonFiniteError

    run = trainer("maml", "exact")
    plain_loss = type(run.objective).query_loss
    run.objective.query_loss = lambda logits, y: (
        plain_loss(run.objective, logits, y) + _InfGradient.apply(logits).sum()
    )
    with pytest.raises(NonFiniteError, match="meta-gradient of .* is not finite at iteration 0"):
        run.train_step()
    run = trainer("maml", "exact")
    with torch.no_grad():
        run.backbone.classifier.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="loss is nan at iteration 0"):
        run.train_step()
