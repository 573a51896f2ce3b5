"""On-disk loaders (fewmask.datasets) against tiny fixtures in each accepted layout."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fewmask.datasets import (
    CifarFSConfig,
    CifarFSSource,
    FashionMNISTConfig,
    FashionMNISTSource,
    FC100Config,
    FC100Source,
    ImageFolderConfig,
    ImageFolderSource,
    MiniImageNetConfig,
    MiniImageNetSource,
    OmniglotConfig,
    OmniglotSource,
    common,
    register,
)
from fewmask.datasets import cifar as cifar_module
from fewmask.datasets import fashion_mnist as fmnist_module
from fewmask.datasets.folders import entry_key, folder_key
from fewmask.errors import DatasetError
from fewmask.registry import Provider, Registry


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Nothing may reach the real ~/.cache: the default cache goes to tmp_path/envcache."""
    monkeypatch.setenv("FEWMASK_CACHE", str(tmp_path / "envcache"))


def write_png(path, size=(12, 12), seed=0, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(common, "decode_image", fail)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


# ----------------------------------------------------------------------------- omniglot

OMNI_SPLIT = {
    "train": ["Alpha/character01", "Beta/character01"],
    "val": ["Alpha/character02"],
    "test": ["Beta/character02"],
}


@pytest.fixture
def omniglot_root(tmp_path):
    root = tmp_path / "omni"
    for folder, alphabet in (("images_background", "Alpha"), ("images_evaluation", "Beta")):
        for c in (1, 2):
            for i in range(3):
                path = root / "omniglot-py" / folder / alphabet / f"character{c:02d}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                ink = np.full((20, 20), 255, np.uint8)  # black ink on white, like Omniglot
                ink[2 : 8 + c, 3 + i : 6 + i] = 0
                Image.fromarray(ink).convert("1").save(path)
    return root


def omni(root, tmp_path, **options):
    options.setdefault("split_file", write_json(tmp_path / "omni_split.json", OMNI_SPLIT))
    return OmniglotSource(OmniglotConfig(root=str(root), cache_dir=str(tmp_path / "c"), **options))


def test_omniglot_vinyals_rotations_and_inversion(omniglot_root, tmp_path):
    before = tree(omniglot_root)
    data = omni(omniglot_root, tmp_path).load("train")
    assert data.images.shape == (8 * 3, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.num_classes == 8 and data.class_counts.tolist() == [3] * 8
    assert data.class_names[:2] == ("Alpha/character01/rot000", "Beta/character01/rot000")
    assert data.class_names[2] == "Alpha/character01/rot090"
    base = data.images[data.labels == 0]
    assert torch.equal(data.images[data.labels == 2], torch.rot90(base, 1, dims=(2, 3)))
    assert torch.equal(data.images[data.labels == 6], torch.rot90(base, 3, dims=(2, 3)))
    assert base[0, 0, -1, -1] == 0 and base.max() > 200  # white ink on black after inversion
    assert tree(omniglot_root) == before  # nothing written into the data folder
    plain = omni(omniglot_root, tmp_path, rotations=False, image_size=14).load("val")
    assert plain.images.shape == (3, 1, 14, 14) and plain.class_names == ("Alpha/character02",)


def test_omniglot_lake_scheme_and_root_variants(omniglot_root, tmp_path):
    source = omni(omniglot_root / "omniglot-py", tmp_path, split_scheme="lake", split_file=None)
    assert source.splits == ("train", "test")
    train = source.load("train")
    assert set(train.class_names) == {
        f"Alpha/character0{c}/rot{r:03d}" for c in (1, 2) for r in (0, 90, 180, 270)
    }
    assert (
        omni(omniglot_root, tmp_path, split_scheme="lake", split_file=None).load("test").num_classes
        == 8
    )
    with pytest.raises(DatasetError, match="'lake' has no 'val'"):
        source.load("val")


def test_omniglot_errors(omniglot_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        omni(tmp_path / "nowhere", tmp_path).load("train")
    assert str(tmp_path / "nowhere") in str(err.value) and "images_background" in str(err.value)
    with pytest.raises(DatasetError, match="unknown split 'dev'; splits: train, val, test"):
        omni(omniglot_root, tmp_path).load("dev")
    with pytest.raises(DatasetError, match="no images_background/ or images_evaluation/"):
        omni(tmp_path, tmp_path).load("train")
    # the built-in Vinyals split names classes this fixture lacks
    with pytest.raises(DatasetError, match="built-in omniglot split.*missing on disk"):
        omni(omniglot_root, tmp_path, split_file=None).load("val")
    missing = write_json(tmp_path / "m.json", {"train": ["Alpha/character09"]})
    with pytest.raises(DatasetError, match="'Alpha/character09'.*missing on disk"):
        omni(omniglot_root, tmp_path, split_file=missing).load("train")
    with pytest.raises(DatasetError, match="cannot be combined"):
        omni(omniglot_root, tmp_path, split_scheme="lake").load("train")
    empty = omniglot_root / "omniglot-py/images_background/Alpha/character02"
    for f in empty.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="holds no images") as err:
        omni(omniglot_root, tmp_path).load("val")
    assert str(empty) in str(err.value)
    bad = omniglot_root / "omniglot-py/images_background/Alpha/character01/1.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        omni(omniglot_root, tmp_path).load("train")
    assert str(bad) in str(err.value)


def test_omniglot_partial_layout(omniglot_root, tmp_path):
    evaluation = omniglot_root / "omniglot-py" / "images_evaluation"
    evaluation.rename(tmp_path / "moved")
    with pytest.raises(DatasetError, match="needs the evaluation folder, missing") as err:
        omni(omniglot_root, tmp_path).load("train")
    assert str(evaluation) in str(err.value) and "expected layout" in str(err.value)
    lake = omni(omniglot_root, tmp_path, split_scheme="lake", split_file=None)
    assert lake.load("train").num_classes == 8
    with pytest.raises(DatasetError, match="images_evaluation"):
        lake.load("test")


def test_omniglot_cache_hit_and_invalidation(omniglot_root, tmp_path, monkeypatch):
    first = omni(omniglot_root, tmp_path).load("train")
    cached = list((tmp_path / "c" / "omniglot").glob("*.pt"))
    assert len(cached) == 1 and not list((tmp_path / "c").rglob("*.tmp"))
    mtime = cached[0].stat().st_mtime_ns
    with monkeypatch.context() as patch:
        forbid_decoding(patch)
        again = omni(omniglot_root, tmp_path).load("train")
    assert torch.equal(first.images, again.images) and first.class_names == again.class_names
    assert cached[0].stat().st_mtime_ns == mtime
    # a changed source file invalidates the cache
    changed = omniglot_root / "omniglot-py/images_background/Alpha/character01/0.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    calls = []
    real = common.decode_image
    monkeypatch.setattr(common, "decode_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    fresh = omni(omniglot_root, tmp_path).load("train")
    assert len(calls) == 6 and not torch.equal(fresh.images, first.images)
    assert fresh.images[0].min() == 255  # an all-black drawing inverts to white


def test_default_cache_dir_from_environment(omniglot_root, tmp_path):
    split = write_json(tmp_path / "s.json", OMNI_SPLIT)
    OmniglotSource(OmniglotConfig(root=str(omniglot_root), split_file=split)).load("test")
    assert list((tmp_path / "envcache" / "omniglot").glob("test-*.pt"))


# ----------------------------------------------------------------------------- CIFAR

FINE = sorted(n for s in ("train", "val", "test") for n in common.builtin_split("cifar_fs")[s])


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for part, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in range(100) for _ in range(per_class)][::-1]  # unsorted, like CIFAR
        data = np.zeros((len(labels), 3072), np.uint8)
        data[:, :1024] = np.array(labels)[:, None]  # red plane: the fine label
        data[:, 1024:2048] = 1 if part == "test" else 0  # green plane: which file
        data[:, 2048:] = np.arange(len(labels))[:, None] % 256  # blue plane: row
        batch = {b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * len(labels)}
        with open(folder / part, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [n.encode() for n in FINE]}, f, protocol=2)
    return tmp_path / "cifar"


def test_cifar_fs_and_fc100_builtin_splits(cifar_root, tmp_path):
    sizes = {}
    for cls, config in ((CifarFSSource, CifarFSConfig), (FC100Source, FC100Config)):
        source = cls(config(root=str(cifar_root), cache_dir=str(tmp_path / "c")))
        sizes[cls.name] = [source.load(s).num_classes for s in ("train", "val", "test")]
    assert sizes == {"cifar_fs": [64, 16, 20], "fc100": [60, 20, 20]}
    train = CifarFSSource(CifarFSConfig(root=str(cifar_root / "cifar-100-python"))).load("train")
    assert train.images.shape == (64 * 3, 3, 32, 32) and train.class_counts.tolist() == [3] * 64
    assert list(train.class_names) == sorted(common.builtin_split("cifar_fs")["train"])
    red = train.images[:, 0, 0, 0].long()
    assert red.tolist() == [FINE.index(train.class_names[int(y)]) for y in train.labels]
    assert train.images[:3, 1, 5, 5].tolist() == [0, 0, 1]  # train images first, then test
    assert FC100Source(FC100Config(root=str(cifar_root))).load("val").class_names[0] == "bear"


def test_cifar_cache_and_errors(cifar_root, tmp_path, monkeypatch):
    config = CifarFSConfig(root=str(cifar_root), cache_dir=str(tmp_path / "c"))
    first = CifarFSSource(config).load("test")
    with monkeypatch.context() as patch:
        patch.setattr(cifar_module, "read_cifar", lambda *a: pytest.fail("cache not used"))
        assert torch.equal(CifarFSSource(config).load("test").images, first.images)
    os.utime(cifar_root / "cifar-100-python" / "train", ns=(5, 5))  # source changed
    calls = []
    real = cifar_module.read_cifar
    monkeypatch.setattr(cifar_module, "read_cifar", lambda *a: calls.append(1) or real(*a))
    CifarFSSource(config).load("test")
    assert calls == [1]
    with pytest.raises(DatasetError, match="unknown split 'testing'; splits: train, val, test"):
        CifarFSSource(config).load("testing")
    unknown = write_json(tmp_path / "u.json", {"train": ["apple", "unicorn"]})
    with pytest.raises(DatasetError, match="'unicorn'.*missing on disk"):
        CifarFSSource(CifarFSConfig(root=str(cifar_root), split_file=unknown)).load("train")
    with pytest.raises(DatasetError, match="no cifar-100-python/"):
        CifarFSSource(CifarFSConfig(root=str(tmp_path))).load("train")
    meta = cifar_root / "cifar-100-python" / "meta"
    meta.rename(tmp_path / "meta")
    with pytest.raises(DatasetError, match="missing CIFAR-100 pickle") as err:
        FC100Source(FC100Config(root=str(cifar_root))).load("train")
    assert str(meta) in str(err.value)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match="refusing to load") as err:
        common.load_pickle(path, "cifar_fs")
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- miniImageNet

MINI_SPLIT = {"train": ["n02", "n01"], "val": ["n03"], "test": ["n04"]}
MINI_PARTS = {"train": ["n01", "n02"], "val": ["n03"], "test": ["n04"]}


def make_mini(root, layout):
    for split, wnids in MINI_PARTS.items():
        if layout == "pkl":
            images = np.stack(
                [np.full((84, 84, 3), 10 * i, np.uint8) for i in range(2 * len(wnids))]
            )
            class_dict = {w: [2 * k, 2 * k + 1] for k, w in enumerate(wnids)}
            root.mkdir(parents=True, exist_ok=True)
            with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump({"image_data": images, "class_dict": class_dict}, f)
            continue
        rows = ["filename,label"]
        for w in wnids:
            for i in range(2):
                name = f"{w}0000000{i}.jpg"
                if layout == "csv":
                    write_png(root / "images" / name, (20, 16), seed=i, mode="RGB")
                    rows.append(f"{name},{w}")
                else:
                    write_png(root / split / w / name, (20, 16), seed=i, mode="RGB")
        if layout == "csv":
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("layout", ["csv", "pkl", "folders"])
def test_mini_imagenet_layouts(layout, tmp_path):
    root = tmp_path / "mini"
    make_mini(root, layout)
    split = write_json(tmp_path / "split.json", MINI_SPLIT)
    config = MiniImageNetConfig(root=str(root), split_file=split, cache_dir=str(tmp_path / "c"))
    train = MiniImageNetSource(config).load("train")
    assert train.images.shape == (4, 3, 84, 84) and train.class_names == ("n01", "n02")
    assert train.labels.tolist() == [0, 0, 1, 1]
    small = MiniImageNetSource(
        MiniImageNetConfig(root=str(root), split_file=split, image_size=32)
    ).load("test")
    assert small.images.shape == (2, 3, 32, 32)
    if layout == "pkl":
        assert train.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30]
    # a custom split may draw classes from another split's files
    mixed = write_json(tmp_path / "mixed.json", {"val": ["n01", "n03"]})
    config = MiniImageNetConfig(root=str(root), split_file=mixed, cache_dir=str(tmp_path / "c"))
    assert MiniImageNetSource(config).load("val").class_names == ("n01", "n03")
    # the built-in Ravi split names wnids this fixture lacks
    with pytest.raises(DatasetError, match="'n01532829' of split 'train'.*missing on disk"):
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("train")


def test_mini_imagenet_errors(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    with pytest.raises(DatasetError, match="no miniImageNet layout found") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("train")
    assert "mini-imagenet-cache" in str(err.value) and str(root) in str(err.value)
    make_mini(root, "csv")
    split = write_json(tmp_path / "split.json", MINI_SPLIT)
    missing = root / "images" / "n0300000001.jpg"
    missing.unlink()
    with pytest.raises(DatasetError, match="is missing") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(root), split_file=split)).load("val")
    assert str(missing) in str(err.value)
    with pytest.raises(DatasetError, match="unknown split 'valid'"):
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("valid")
    write_png(missing, mode="RGB")
    (root / "test.csv").unlink()
    with pytest.raises(DatasetError, match="split 'test' is missing") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(root), split_file=split)).load("test")
    assert str(root / "test.csv") in str(err.value)
    pickles = tmp_path / "pkl"
    make_mini(pickles, "pkl")
    (pickles / "mini-imagenet-cache-val.pkl").unlink()
    with pytest.raises(DatasetError, match="missing pickle") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(pickles))).load("val")
    assert str(pickles / "mini-imagenet-cache-val.pkl") in str(err.value)


# ----------------------------------------------------------------------------- image folders


def test_image_folder_split_file_sizes_channels_and_crop(tmp_path):
    root = tmp_path / "birds"
    for c in ("a", "b", "c"):
        for i in range(2):
            write_png(root / c / f"{i}.jpg", (30, 20), seed=i, mode="RGB")
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, :20, 0] = stripes[:, 20:40, 1] = stripes[:, 40:, 2] = 255
    Image.fromarray(stripes).save(root / "c" / "2.png")
    (root / "c" / "notes.txt").write_text("ignored")
    split = write_json(tmp_path / "s.json", {"train": ["b", "a"], "val": ["c"], "test": ["c"]})

    def load(split_name, **options):
        options.setdefault("cache_dir", str(tmp_path / "c"))
        config = ImageFolderConfig(root=str(root), split_file=split, **options)
        return ImageFolderSource(config).load(split_name)

    train = load("train", image_size=32)
    assert train.images.shape == (4, 3, 32, 32) and train.class_names == ("a", "b")
    gray = load("val", image_size=84, channels=1)
    assert gray.images.shape == (3, 1, 84, 84)
    crop = load("val", image_size=8, resize="center_crop").images[2]
    squash = load("val", image_size=8).images[2]
    assert crop[1].float().mean() > 200 and crop[0].float().mean() < 30  # centre stripe only
    assert squash[0, :, 0].float().mean() > 200  # squash keeps the left (red) stripe
    with pytest.raises(DatasetError, match="unknown split 'all'"):
        load("all")


def test_image_folder_split_folders_layout_and_errors(tmp_path, monkeypatch):
    root = tmp_path / "own"
    for split, classes in (("train", ["x", "y"]), ("val", ["z"]), ("test", ["w"])):
        for c in classes:
            write_png(root / split / c / "0.png", seed=len(c))
    config = ImageFolderConfig(root=str(root), image_size=32, cache_dir=str(tmp_path / "c"))
    first = ImageFolderSource(config).load("train")
    assert first.class_names == ("x", "y") and first.images.shape == (2, 3, 32, 32)
    with monkeypatch.context() as patch:
        forbid_decoding(patch)
        assert torch.equal(ImageFolderSource(config).load("train").images, first.images)
    write_png(root / "train" / "x" / "1.png")  # a new file invalidates the cache
    assert ImageFolderSource(config).load("train").images.shape[0] == 3
    (root / "test" / "w" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        ImageFolderSource(config).load("test")
    assert str(root / "test" / "w" / "0.png") in str(err.value)
    (root / "val" / "z" / "0.png").unlink()
    with pytest.raises(DatasetError, match="holds no images") as err:
        ImageFolderSource(config).load("val")
    assert str(root / "val" / "z") in str(err.value)
    flat = tmp_path / "flat"
    write_png(flat / "k" / "0.png")
    with pytest.raises(DatasetError, match="no split: set the split or split_file") as err:
        ImageFolderSource(ImageFolderConfig(root=str(flat))).load("train")
    assert str(flat) in str(err.value) and "ROOT/{train,val,test}/<class>" in str(err.value)
    split = write_json(tmp_path / "s.json", {"train": ["k", "gone"]})
    with pytest.raises(DatasetError, match="'gone' of split 'train'.*missing on disk") as err:
        ImageFolderSource(ImageFolderConfig(root=str(flat), split_file=split)).load("train")
    assert str(flat / "gone") in str(err.value)
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderSource(ImageFolderConfig(root=str(tmp_path / "nope"))).load("train")
    with pytest.raises(DatasetError, match="channels must be 1 .* or 3"):
        ImageFolderSource(ImageFolderConfig(root=str(flat), channels=2))


def test_image_folder_builtin_splits(tmp_path):
    flowers = tmp_path / "flowers"
    for i in range(1, 103):  # every naming style the id matcher accepts
        name = (f"class_{i:05d}", f"{i:03d}", f"{i}.some name")[i % 3]
        write_png(flowers / name / "0.png", (6, 6), seed=i)
    source = ImageFolderSource(
        ImageFolderConfig(
            root=str(flowers), split="vgg_flower", image_size=32, cache_dir=str(tmp_path / "c")
        )
    )
    sizes = [source.load(s).num_classes for s in ("train", "val", "test")]
    assert sizes == [71, 15, 16]
    cub = tmp_path / "CUB_200_2011"
    names = sorted(n for s in ("train", "val", "test") for n in common.builtin_split("cub")[s])
    for n in names:
        write_png(cub / "images" / n / "0.jpg", (6, 6), mode="RGB")
    config = ImageFolderConfig(root=str(tmp_path), split="cub", cache_dir=str(tmp_path / "c"))
    val = ImageFolderSource(config).load("val")
    assert val.num_classes == 50 and val.class_names[0] == "002.Laysan_Albatross"
    (cub / "images" / "002.Laysan_Albatross" / "0.jpg").unlink()
    (cub / "images" / "002.Laysan_Albatross").rmdir()
    with pytest.raises(DatasetError, match="'002.Laysan_Albatross'.*missing on disk"):
        ImageFolderSource(config).load("val")
    assert folder_key("F-16A_B", "aircraft") == entry_key("F-16A/B", "aircraft")
    assert folder_key("class_00007", "cars") == entry_key(7, "cars") == "7"
    assert folder_key("notes", "cars") is None


# ----------------------------------------------------------------------------- Fashion-MNIST


def write_idx(path, array, magic, compress):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


@pytest.fixture
def fashion_root(tmp_path):
    root = tmp_path / "fashion"
    root.mkdir()
    for part, count, compress in (("train", 20, True), ("t10k", 10, False)):
        labels = np.arange(count) % 10
        images = np.broadcast_to(np.arange(count)[:, None, None], (count, 28, 28))
        write_idx(
            root / f"{part}-images-idx3-ubyte",
            images + (100 if part == "t10k" else 0),
            2051,
            compress,
        )
        write_idx(root / f"{part}-labels-idx1-ubyte", labels, 2049, compress)
    return root


def test_fashion_mnist_pools_everything(fashion_root, tmp_path, monkeypatch):
    config = FashionMNISTConfig(root=str(fashion_root), cache_dir=str(tmp_path / "c"))
    source = FashionMNISTSource(config)
    splits = [source.load(s) for s in ("train", "val", "test")]
    for data in splits:
        assert data.images.shape == (30, 1, 28, 28) and data.class_counts.tolist() == [3] * 10
        assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert splits[0].images[:3, 0, 0, 0].tolist() == [0, 10, 100]  # stable: train then t10k
    with monkeypatch.context() as patch:
        patch.setattr(fmnist_module, "read_idx", lambda *a: pytest.fail("cache not used"))
        rgb = FashionMNISTSource(
            FashionMNISTConfig(root=str(fashion_root), channels=3, cache_dir=str(tmp_path / "c"))
        ).load("test")
    assert rgb.images.shape == (30, 3, 28, 28) and torch.equal(rgb.images[:, 1], rgb.images[:, 0])
    big = FashionMNISTSource(FashionMNISTConfig(root=str(fashion_root), image_size=32)).load("val")
    assert big.images.shape == (30, 1, 32, 32)
    with pytest.raises(DatasetError, match="unknown split 'meta-test'"):
        source.load("meta-test")


def test_fashion_mnist_errors(fashion_root, tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist_module, "DEBIAN_ROOTS", (str(tmp_path / "usr-share"),))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTSource(FashionMNISTConfig()).load("test")
    labels = fashion_root / "t10k-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">II", 2051, 10) + bytes(10))
    with pytest.raises(DatasetError, match="magic 2051, expected 2049") as err:
        FashionMNISTSource(FashionMNISTConfig(root=str(fashion_root))).load("test")
    assert str(labels) in str(err.value)
    labels.unlink()
    with pytest.raises(DatasetError, match="missing IDX file") as err:
        FashionMNISTSource(FashionMNISTConfig(root=str(fashion_root))).load("test")
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    with pytest.raises(DatasetError, match="no Fashion-MNIST IDX files"):
        FashionMNISTSource(FashionMNISTConfig(root=str(tmp_path))).load("test")


# ----------------------------------------------------------------------------- registration


def test_register_and_create_through_the_registry(cifar_root):
    registry = Registry()
    register(registry.scoped(Provider("fewmask", "fewmask", "0")))
    assert set(registry.names("dataset")) == {
        "omniglot",
        "cifar_fs",
        "fc100",
        "mini_imagenet",
        "image_folder",
        "fashion_mnist",
        "aircraft",
        "vgg_flower",
        "cars",
    }
    source = registry.create("dataset", "fc100", {"root": str(cifar_root)})
    assert source.load("test").num_classes == 20


def test_options_render_in_the_config_reference():
    from fewmask.config import fields_markdown

    for config in (
        OmniglotConfig,
        CifarFSConfig,
        FC100Config,
        MiniImageNetConfig,
        ImageFolderConfig,
        FashionMNISTConfig,
    ):
        assert "`root`" in fields_markdown(config)


def test_shipped_splits_keep_their_source():
    for name in (
        "omniglot",
        "cifar_fs",
        "fc100",
        "mini_imagenet",
        "cub",
        "cub_meta_dataset",
        "vgg_flower",
        "aircraft",
        "cars",
    ):
        data = common.builtin_split(name)
        assert "(MIT)" in data["source"] or "(Apache-2.0)" in data["source"], name
        assert not set(map(str, data["train"])) & set(map(str, data["test"]))
