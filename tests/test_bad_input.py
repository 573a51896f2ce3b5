"""Bad input never gives a traceback: malformed configs (Hypothesis), data and plugin problems."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fewmask import ConfigError, DatasetError, FewShotDataset, TrainConfig, Trainer, create
from fewmask import resolve as resolve_config
from fewmask.cli import main
from fewmask.testing import make_dataset

VALID = {
    "seed": 1,
    "backbone": {"name": "omniglot_mlp", "options": {"width": 1.0, "hidden": [8, 8]}},
    "sampler": {"name": "episodic", "options": {"ways": 5, "shots": 1}},
    "objective": {"name": "metaticket", "options": {"warmup": 10}},
    "masker": {"name": "metaticket", "options": {"init_sparsity": 0.0}},
    "inner": {"name": "sgd", "options": {"lr": 0.4, "steps": 1}},
    "train": {"iterations": 10, "meta_batch_size": 4, "dtype": "float32"},
}
# (path, a value that is always wrong there)
INT_FIELDS = [
    ("train", "iterations"),
    ("train", "meta_batch_size"),
    ("seed",),
    ("inner", "options", "steps"),
    ("sampler", "options", "ways"),
]
FLOAT_FIELDS = [
    ("inner", "options", "lr"),
    ("backbone", "options", "width"),
    ("masker", "options", "init_sparsity"),
    ("objective", "options", "lr"),
]
wrong_types = st.one_of(
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.booleans(),
)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


def set_path(data, path, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


mutations = st.one_of(
    st.tuples(st.just("type"), st.sampled_from(INT_FIELDS + FLOAT_FIELDS), wrong_types),
    st.tuples(
        st.just("range"),
        st.sampled_from(
            [
                (("train", "iterations"), 0),
                (("train", "meta_batch_size"), -3),
                (("seed",), -1),
                (("inner", "options", "lr"), -0.5),
                (("masker", "options", "init_sparsity"), 1.0),
                (("sampler", "options", "ways"), 1),
                (("backbone", "options", "width"), 0.0),
                (("train", "dtype"), "float16"),
                (("objective", "options", "schedule"), "linear"),
            ]
        ),
        st.none(),
    ),
    st.tuples(
        st.just("extra"),
        st.sampled_from(
            [(), ("train",), ("backbone", "options"), ("masker", "options"), ("inner", "options")]
        ),
        names.map(lambda n: "zz_" + n),
    ),
    st.tuples(
        st.just("name"),
        st.sampled_from(["backbone", "masker", "inner", "objective", "sampler", "dataset"]),
        names.map(lambda n: "x_" + n),
    ),
    st.tuples(
        st.just("options"),
        st.sampled_from(["backbone", "masker", "inner", "sampler"]),
        st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
    ),
)


def apply(data, mutation):
    kind, where, value = mutation
    if kind == "type":
        set_path(data, where, value)
    elif kind == "range":
        set_path(data, where[0], where[1])
    elif kind == "extra":
        node = data
        for key in where:
            node = node[key]
        node[value] = 1
    elif kind == "name":
        data.setdefault(where, {})["name"] = value
    else:
        data[where]["options"] = value


@given(st.lists(mutations, min_size=1, max_size=4))
def test_malformed_configs_give_config_errors_never_tracebacks(mutation_list):
    data = copy.deepcopy(VALID)
    for mutation in sorted(mutation_list, key=lambda m: m[0] == "options"):  # reshaping last
        apply(data, mutation)
    with pytest.raises(ConfigError) as info:
        resolve_config(data)
    assert info.value.problems and all(p.startswith("$") for p in info.value.problems)


def test_valid_base_config_is_valid():
    resolve_config(VALID)


@given(mutations)
def test_cli_exits_2_on_malformed_config(tmp_path_factory, mutation):
    import yaml

    data = copy.deepcopy(VALID)
    apply(data, mutation)
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2


def test_dataset_shape_problems_name_the_culprit():
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    with pytest.raises(DatasetError, match=r"mine: images must be a uint8 tensor \[N, C, H, W\]"):
        FewShotDataset(images, torch.zeros(4, dtype=torch.long), ("a",), "mine")
    with pytest.raises(DatasetError, match="sorted by class"):
        FewShotDataset(
            torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 0, 0]), ("a", "b"), "mine"
        )
    with pytest.raises(DatasetError, match="holds no images"):
        FewShotDataset(
            torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), (), "mine"
        )


def test_split_with_other_image_size_or_too_few_classes_is_named():
    sampler = create("sampler", "episodic", {"ways": 5})
    backbone = create("backbone", "omniglot_mlp", {}, input_shape=(1, 28, 28), num_classes=5)
    parts = (
        create("masker", "dense"),
        create("inner_optimizer", "sgd"),
        create("objective", "maml"),
    )
    odd = make_dataset(shape=(3, 28, 28), name="rgb")
    with pytest.raises(DatasetError, match="rgb: split 'val' has images of shape"):
        Trainer(backbone, *parts, sampler, {"train": make_dataset(), "val": odd})
    few = make_dataset(classes=3, name="few")
    with pytest.raises(DatasetError, match="few: 5-way episodes need at least 5 classes"):
        Trainer(backbone, *parts, sampler, {"train": few}, TrainConfig())


def test_corrupt_or_wrong_glyph_file_is_named(tmp_path, capsys):
    bad = tmp_path / "glyphs.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match=str(bad)):
        create("dataset", "glyphs", {"path": str(bad)}).load("train")
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(DatasetError, match="other.npz"):
        create("dataset", "glyphs", {"path": str(tmp_path / "other.npz")}).load("train")
    with pytest.raises(DatasetError, match="unknown split 'tarin'"):
        create("dataset", "glyphs").load("tarin")
