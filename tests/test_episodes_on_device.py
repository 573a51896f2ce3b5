"""A dataset held on the device: the sampler gathers there, with the same random draws.

``FewShotDataset.to(device)`` moves the uint8 images once; ``train.data_on_device`` does it for
every split. The draws stay on the CPU generator, so the episodes are those of the CPU path.
Without a GPU, the ``meta`` device stands in for one (tensors with shapes but no data): the
gather must happen there. ``tests/test_cuda.py`` compares the images on a real GPU.
"""

from __future__ import annotations

import pytest
import torch

from fewmask import Trainer, create
from fewmask.config import TrainConfig
from fewmask.testing import make_dataset

SHAPE = (3, 16, 16)


def sampler():
    return create("sampler", "episodic", {"ways": 3, "shots": 2, "queries": 3})


def test_dataset_to_moves_the_images_only():
    dataset = make_dataset(classes=5, per_class=6, shape=SHAPE)
    moved = dataset.to("meta")
    assert moved.images.device.type == "meta" and moved.images.dtype == torch.uint8
    assert moved.labels is dataset.labels  # the sampler draws on the CPU
    assert (moved.class_names, moved.name, moved.image_shape) == (
        dataset.class_names,
        dataset.name,
        dataset.image_shape,
    )
    assert dataset.to("cpu").images is dataset.images


def test_episodes_are_gathered_on_the_datasets_device_with_the_same_draws():
    dataset = make_dataset(classes=5, per_class=6, shape=SHAPE)
    on_cpu, on_meta = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    cpu = sampler().sample_many(dataset, on_cpu, 4)
    meta = sampler().sample_many(dataset.to("meta"), on_meta, 4)
    assert torch.equal(on_cpu.get_state(), on_meta.get_state())  # the same draws, on the CPU
    for a, b in zip(cpu, meta):
        assert all(t.device.type == "meta" for t in b)  # gathered where the images are
        assert [t.shape for t in a] == [t.shape for t in b]
        assert [t.dtype for t in a] == [t.dtype for t in b]


def test_the_gather_uses_the_indices_drawn_on_the_cpu(monkeypatch):
    """The indices the sampler gathers with are drawn identically whatever the device."""
    dataset = make_dataset(classes=5, per_class=6, shape=SHAPE)
    seen = []
    original = torch.Tensor.index_select

    def spy(self, dim, index):
        seen.append((self.device.type, index.device.type))
        return original(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", spy)
    cpu = sampler().sample_many(dataset, torch.Generator().manual_seed(5), 2)
    assert seen == [("cpu", "cpu")] * 2
    seen.clear()
    sampler().sample_many(dataset.to("meta"), torch.Generator().manual_seed(5), 2)
    assert seen == [("meta", "meta")] * 2
    # the CPU episodes are exactly the images at the drawn indices
    want = sampler().sample_many(dataset, torch.Generator().manual_seed(5), 2)
    assert all(torch.equal(x, y) for a, b in zip(cpu, want) for x, y in zip(a, b))


@pytest.mark.parametrize("engine", ["exact", "fast"])
def test_data_on_device_gives_the_same_training(engine):
    """On the CPU, data_on_device changes nothing: the same episodes, the same step."""

    def run(on_device: bool):
        torch.manual_seed(0)
        datasets = {"train": make_dataset(classes=5, per_class=6, shape=SHAPE)}
        backbone = create("backbone", "conv4", {"channels": 3}, input_shape=SHAPE, num_classes=3)
        config = TrainConfig(
            iterations=2, meta_batch_size=2, engine=engine, data_on_device=on_device
        )
        trainer = Trainer(
            backbone,
            create("masker", "dense"),
            create("inner_optimizer", "sgd", {"lr": 0.4}),
            create("objective", "maml"),
            sampler(),
            datasets,
            config,
        )
        stats = [trainer.train_step() for _ in range(2)]
        return stats, trainer.backbone.state_dict()

    (stats_a, state_a), (stats_b, state_b) = run(False), run(True)
    assert stats_a == stats_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
