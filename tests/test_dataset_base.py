"""The loader base class (fewmask.CachedSource): a third-party loader written against the public
API, the shared load() (split check, fingerprint, cache, atomic write, errors), config checks."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import fewmask
from fewmask import CachedSource, CachedSourceConfig, ConfigError, DatasetError, option
from fewmask.cli import main

ROOT = Path(__file__).parents[1]


@attrs.frozen
class NpzConfig(CachedSourceConfig):
    invert: bool = option(False, help="white ink on black")


class NpzSource(CachedSource):
    """``ROOT/<split>.npz``: ``images`` uint8 [N, H, W] and ``labels`` [N], as a plugin would."""

    name = "npz_pairs"
    layout = "ROOT/{train,val,test}.npz"
    after_cache = ("invert",)

    def __init__(self, config: NpzConfig):
        super().__init__(config)
        self.decoded: list[str] = []

    def source_files(self, split: str) -> list[Path]:
        file = self.root_folder() / f"{split}.npz"
        if not file.is_file():
            raise self.layout_error("missing file", file)
        return [file]

    def decode(self, split: str):
        self.decoded.append(split)
        with np.load(self.source_files(split)[0]) as npz:
            order = np.argsort(npz["labels"], kind="stable")
            images, labels = npz["images"][order], npz["labels"][order]
        classes, labels = np.unique(labels, return_inverse=True)
        names = [f"class{c}" for c in classes]
        return torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype(np.int64)), names

    def finish(self, arrays):
        images, labels, names = arrays
        return (255 - images if self.config.invert else images), labels, names


@pytest.fixture
def npz_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for split, count in (("train", 6), ("val", 4)):
        images = np.arange(count * 16, dtype=np.uint8).reshape(count, 4, 4)
        np.savez(root / f"{split}.npz", images=images, labels=np.arange(count)[::-1] % 2)
    return root


def source(root, tmp_path, **options):
    return NpzSource(NpzConfig(root=str(root), cache_dir=str(tmp_path / "cache"), **options))


def test_a_plugin_loader_needs_only_source_files_and_decode(npz_root, tmp_path):
    first = source(npz_root, tmp_path)
    data = first.load("train")
    assert data.name == "npz_pairs/train" and data.class_names == ("class0", "class1")
    assert data.images.shape == (6, 1, 4, 4) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert first.decoded == ["train"]
    cached = list((tmp_path / "cache" / "npz_pairs").glob("train-*.pt"))
    assert len(cached) == 1 and not list((tmp_path / "cache").rglob("*.tmp"))
    assert sorted(p.name for p in npz_root.iterdir()) == ["train.npz", "val.npz"]
    again = source(npz_root, tmp_path, invert=True)  # after_cache: the same cache file
    assert torch.equal(again.load("train").images, 255 - data.images) and again.decoded == []
    os.utime(npz_root / "train.npz", ns=(7, 7))  # a changed source decodes again
    third = source(npz_root, tmp_path)
    assert torch.equal(third.load("train").images, data.images) and third.decoded == ["train"]
    assert len(list((tmp_path / "cache" / "npz_pairs").glob("train-*.pt"))) == 1


def test_shared_errors_name_the_split_and_the_path(npz_root, tmp_path):
    with pytest.raises(DatasetError, match="npz_pairs: unknown split 'dev'; splits: train, val"):
        source(npz_root, tmp_path).load("dev")
    with pytest.raises(DatasetError, match="npz_pairs: missing file") as err:
        source(npz_root, tmp_path).load("test")
    assert str(npz_root / "test.npz") in str(err.value) and "ROOT/{train,val,test}" in str(
        err.value
    )
    with pytest.raises(DatasetError, match="npz_pairs: root does not exist"):
        source(tmp_path / "nowhere", tmp_path).load("train")
    with pytest.raises(ConfigError, match=r"\$\.root: is empty"):
        source("", tmp_path)


def test_unreadable_files_and_bad_decodes(npz_root, tmp_path, monkeypatch):
    denied = PermissionError(13, "Permission denied", str(npz_root / "train.npz"))
    monkeypatch.setattr(
        NpzSource, "source_files", lambda self, split: (_ for _ in ()).throw(denied)
    )
    with pytest.raises(DatasetError, match="npz_pairs: cannot read .*train.npz: Permission denied"):
        source(npz_root, tmp_path).load("train")
    monkeypatch.undo()
    monkeypatch.setattr(
        NpzSource, "decode", lambda self, split: (np.zeros((1, 1, 2, 2)), [0], ["a"])
    )
    with pytest.raises(TypeError, match="NpzSource.decode must return"):
        source(npz_root, tmp_path).load("train")
    unsorted = (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 0]), ["a", "b"])
    monkeypatch.setattr(NpzSource, "decode", lambda self, split: unsorted)
    with pytest.raises(DatasetError, match="npz_pairs/train: labels must be .* sorted"):
        source(npz_root, tmp_path).load("train")
    assert not (tmp_path / "cache").exists(), "a bad decode is never cached"


def test_an_unwritable_cache_costs_a_warning_not_the_run(npz_root, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    config = NpzConfig(root=str(npz_root), cache_dir=str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot write the dataset cache"):
        assert NpzSource(config).load("val").num_classes == 2


def test_every_builtin_dataset_is_a_cached_source():
    for name in fewmask.list_components("dataset"):
        info = fewmask.default_registry().get("dataset", name)
        assert issubclass(info.cls, CachedSource), name
        if name != "glyphs":  # package data: no root, no cache
            assert issubclass(info.config_cls, CachedSourceConfig), name
            assert [f.name for f in attrs.fields(info.config_cls)].count("cache_dir") == 1


@pytest.mark.parametrize(
    ("dataset", "problem"),
    [
        (
            "{name: omniglot, options: {root: /nowhere, split_scheme: lake, split_file: s.json}}",
            "$.dataset.options.split_file: replaces the Vinyals lists; it cannot be combined",
        ),
        (
            "{name: image_folder, options: {root: /nowhere, channels: 2}}",
            "$.dataset.options.channels: must be 1 (grayscale) or 3 (RGB), got 2",
        ),
        (
            "{name: image_folder, options: {root: /nowhere, split: cars}}",
            "$.dataset.options.split: class folders of cars are read by the 'cars' dataset",
        ),
        (
            "{name: fashion_mnist, options: {channels: 2}}",
            "$.dataset.options.channels: must be 1 (grayscale) or 3 (RGB), got 2",
        ),
        ("{name: cifar_fs, options: {root: ''}}", "$.dataset.options.root: is empty"),
    ],
)
def test_validate_reports_dataset_option_problems_before_any_data(dataset, problem, capsys):
    config = str(ROOT / "examples" / "metaticket_glyphs.yaml")
    assert main(["validate", config, "-o", f"dataset={dataset}"]) == 2
    assert problem in capsys.readouterr().err
