"""On-disk loaders (fewmask.datasets) against tiny fixtures in each accepted layout."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import zipfile

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
    register,
)
from fewmask.datasets import cifar as cifar_module
from fewmask.datasets import fashion_mnist as fmnist_module
from fewmask.datasets.layout import builtin_split
from fewmask.datasets.pickles import load_pickle
from fewmask.errors import ConfigError, DatasetError
from fewmask.factory import create
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


def forbid_decoding(monkeypatch, source_class):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(source_class, "decode", fail)


def spy_decode(monkeypatch, source_class):
    """The splits ``source_class.decode`` is called for (a cache miss decodes once)."""
    calls = []
    real = source_class.decode
    monkeypatch.setattr(
        source_class, "decode", lambda self, split: calls.append(split) or real(self, split)
    )
    return calls


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


# ----------------------------------------------------------------------------- omniglot

OMNI_SPLIT = {
    "train": ["Alpha/character01", "Beta/character01"],
    "val": ["Alpha/character02"],
    "test": ["Beta/character02"],
}
OMNI_PARTS = (("images_background", "Alpha", 1), ("images_evaluation", "Beta", 2))


def omniglot_file(part, alphabet, char, drawer):
    """Omniglot's own member names: ``<part>/<Alphabet>/characterNN/<image id>_<drawer>.png``."""
    image_id = 100 * (1 if part == "images_background" else 9) + char
    return f"{part}/{alphabet}/character{char:02d}/{image_id:04d}_{drawer:02d}.png"


def drawing(char, drawer):
    ink = np.full((20, 20), 255, np.uint8)  # black ink on white, like Omniglot
    ink[2 : 8 + char, 3 + drawer : 6 + drawer] = 0
    return Image.fromarray(ink).convert("1")


@pytest.fixture
def omniglot_root(tmp_path):
    root = tmp_path / "omni"
    for part, alphabet, _ in OMNI_PARTS:
        for c in (1, 2):
            for i in range(1, 4):
                path = root / "omniglot-py" / omniglot_file(part, alphabet, c, i)
                path.parent.mkdir(parents=True, exist_ok=True)
                drawing(c, i).save(path)
    return root


def zip_parts(folders, target):
    """The two original archives, built from unpacked folders: directory entries included."""
    target.mkdir(parents=True, exist_ok=True)
    for part, _, _ in OMNI_PARTS:
        with zipfile.ZipFile(target / f"{part}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted((folders / part).rglob("*")):
                name = path.relative_to(folders).as_posix()
                if path.is_dir():
                    archive.writestr(name + "/", b"")
                else:
                    archive.write(path, name)
    return target


@pytest.fixture
def omniglot_zips(omniglot_root, tmp_path):
    return zip_parts(omniglot_root / "omniglot-py", tmp_path / "omni_zips")


def omni(root, tmp_path, **options):
    if "split_file" not in options:  # written once: a rewritten split file is a changed source
        split = tmp_path / "omni_split.json"
        options["split_file"] = str(split) if split.exists() else write_json(split, OMNI_SPLIT)
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
    with pytest.raises(DatasetError, match=r"no images_background/ or images_evaluation/ folder"):
        omni(tmp_path, tmp_path).load("train")
    # the built-in Vinyals split names classes this fixture lacks
    with pytest.raises(DatasetError, match="built-in omniglot split.*missing on disk"):
        omni(omniglot_root, tmp_path, split_file=None).load("val")
    missing = write_json(tmp_path / "m.json", {"train": ["Alpha/character09"]})
    with pytest.raises(DatasetError, match="'Alpha/character09'.*missing on disk"):
        omni(omniglot_root, tmp_path, split_file=missing).load("train")
    with pytest.raises(ConfigError, match=r"\$\.split_file: .*cannot be combined"):
        omni(omniglot_root, tmp_path, split_scheme="lake")
    empty = omniglot_root / "omniglot-py/images_background/Alpha/character02"
    for f in empty.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="holds no images") as err:
        omni(omniglot_root, tmp_path).load("val")
    assert str(empty) in str(err.value)
    bad = omniglot_root / "omniglot-py" / omniglot_file("images_background", "Alpha", 1, 2)
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        omni(omniglot_root, tmp_path).load("train")
    assert str(bad) in str(err.value)


def test_omniglot_partial_layout(omniglot_root, tmp_path):
    evaluation = omniglot_root / "omniglot-py" / "images_evaluation"
    evaluation.rename(tmp_path / "moved")
    with pytest.raises(
        DatasetError, match="needs the evaluation folder .or its zip., missing"
    ) as err:
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
        forbid_decoding(patch, OmniglotSource)
        again = omni(omniglot_root, tmp_path).load("train")
        unrotated = omni(omniglot_root, tmp_path, rotations=False).load("train")  # same file
    assert torch.equal(first.images, again.images) and first.class_names == again.class_names
    assert unrotated.num_classes == 2 and cached[0].stat().st_mtime_ns == mtime
    # a changed source file invalidates the cache
    changed = omniglot_root / "omniglot-py" / omniglot_file("images_background", "Alpha", 1, 1)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    calls = spy_decode(monkeypatch, OmniglotSource)
    fresh = omni(omniglot_root, tmp_path).load("train")
    assert calls == ["train"] and not torch.equal(fresh.images, first.images)
    assert fresh.images[0].min() == 255  # an all-black drawing inverts to white
    # so does an edited split file
    edited = write_json(tmp_path / "omni_split.json", {**OMNI_SPLIT, "train": ["Beta/character01"]})
    os.utime(edited, ns=(2, 2))
    assert omni(omniglot_root, tmp_path).load("train").num_classes == 4 and len(calls) == 2


def test_default_cache_dir_from_environment(omniglot_root, tmp_path):
    split = write_json(tmp_path / "s.json", OMNI_SPLIT)
    OmniglotSource(OmniglotConfig(root=str(omniglot_root), split_file=split)).load("test")
    assert list((tmp_path / "envcache" / "omniglot").glob("test-*.pt"))


def test_omniglot_zips_match_the_unpacked_folders(omniglot_root, omniglot_zips, tmp_path):
    """The two original zips are read in place and give the folders' tensors exactly."""
    names = sorted(zipfile.ZipFile(omniglot_zips / "images_background.zip").namelist())
    assert "images_background/Alpha/character01/0101_01.png" in names
    assert "images_background/Alpha/" in names  # directory entries, as in the real archives
    before = tree(omniglot_zips)
    for options in ({}, {"split_scheme": "lake", "split_file": None}):
        for split in ("train", "test"):
            folders = omni(omniglot_root, tmp_path, **options).load(split)
            zipped = omni(omniglot_zips, tmp_path / "z", **options).load(split)
            assert torch.equal(zipped.images, folders.images)
            assert torch.equal(zipped.labels, folders.labels)
            assert zipped.class_names == folders.class_names
    assert tree(omniglot_zips) == before  # nothing extracted next to the zips
    assert list((tmp_path / "z" / "c" / "omniglot").glob("train-*.pt"))
    # ROOT/omniglot-py/ may hold them too, as torchvision downloads them
    nested = zip_parts(omniglot_root / "omniglot-py", tmp_path / "nested" / "omniglot-py")
    assert omni(nested.parent, tmp_path).load("val").num_classes == 4


def test_omniglot_zips_are_the_fingerprint(omniglot_zips, tmp_path, monkeypatch):
    first = omni(omniglot_zips, tmp_path).load("val")
    with monkeypatch.context() as patch:
        forbid_decoding(patch, OmniglotSource)
        assert torch.equal(omni(omniglot_zips, tmp_path).load("val").images, first.images)
    calls = spy_decode(monkeypatch, OmniglotSource)
    os.utime(omniglot_zips / "images_evaluation.zip", ns=(3, 3))
    omni(omniglot_zips, tmp_path).load("val")
    assert calls == ["val"]


def test_omniglot_one_part_zipped_the_other_unpacked(omniglot_root, tmp_path):
    evaluation = omniglot_root / "omniglot-py" / "images_evaluation"
    zips = zip_parts(omniglot_root / "omniglot-py", tmp_path / "zips")
    (zips / "images_evaluation.zip").rename(evaluation.with_suffix(".zip"))
    expected = omni(omniglot_root, tmp_path / "a").load("train")
    for f in sorted(evaluation.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    evaluation.rmdir()
    mixed = omni(omniglot_root, tmp_path / "b").load("train")
    assert torch.equal(mixed.images, expected.images)


def test_omniglot_truncated_wrong_or_corrupt_zip(omniglot_zips, tmp_path):
    background = omniglot_zips / "images_background.zip"
    intact = background.read_bytes()
    background.write_bytes(intact[: len(intact) // 2])  # cut off: no central directory
    with pytest.raises(DatasetError, match="not a readable zip archive") as err:
        omni(omniglot_zips, tmp_path).load("train")
    assert str(background) in str(err.value)
    with zipfile.ZipFile(background, "w") as wrong:  # a zip of something else
        wrong.writestr("photos/cat.png", b"")
    with pytest.raises(DatasetError, match="no images_background/<Alphabet>.*photos") as err:
        omni(omniglot_zips, tmp_path).load("train")
    assert str(background) in str(err.value) and "expected layout" in str(err.value)
    member = "images_background/Alpha/character01/0101_02.png"
    with zipfile.ZipFile(background, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(member, drawing(1, 2).tobytes() + b"payload")
    data = bytearray(background.read_bytes())
    offset = data.index(b"payload")
    data[offset : offset + 7] = b"PAYLOAD"  # the stored CRC no longer matches
    background.write_bytes(bytes(data))
    split = write_json(tmp_path / "one.json", {"train": ["Alpha/character01"]})
    with pytest.raises(DatasetError, match="cannot read .*0101_02.png from .*truncated or corrupt"):
        omni(omniglot_zips, tmp_path, split_file=split).load("train")


def test_omniglot_zip_member_that_is_not_an_image(omniglot_zips, tmp_path):
    background = omniglot_zips / "images_background.zip"
    with zipfile.ZipFile(background, "w") as archive:
        archive.writestr("images_background/Alpha/character01/0101_01.png", b"not a png")
    split = write_json(tmp_path / "one.json", {"train": ["Alpha/character01"]})
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        omni(omniglot_zips, tmp_path, split_file=split).load("train")
    assert f"{background}:images_background/Alpha/character01/0101_01.png" in str(err.value)


# ----------------------------------------------------------------------------- CIFAR

FINE = sorted(n for s in ("train", "val", "test") for n in builtin_split("cifar_fs")[s])


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
    assert list(train.class_names) == sorted(builtin_split("cifar_fs")["train"])
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
        load_pickle(path, "cifar_fs")
    assert str(path) in str(err.value)


# ----------------------------------------------------------------------------- miniImageNet

MINI_SPLIT = {"train": ["n02", "n01"], "val": ["n03"], "test": ["n04"]}
MINI_PARTS = {"train": ["n01", "n02"], "val": ["n03"], "test": ["n04"]}
MINI_LABELS = {"n01": 0, "n02": 1, "n03": 64, "n04": 80}  # MetaOptNet: global labels
CATEGORY = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}


def mini_images(count):
    return np.stack([np.full((84, 84, 3), 10 * i, np.uint8) for i in range(count)])


def py2_pickle(obj) -> bytes:
    """``obj`` pickled as Python 2's cPickle writes it (protocol 2): every str a byte string
    (``BINSTRING``), numpy arrays rebuilt by ``numpy.core.multiarray._reconstruct`` from raw
    bytes held in such a string. Python 3 reads it only with ``encoding='latin1'``."""
    out = bytearray(b"\x80\x02")

    def string(raw: bytes) -> None:
        if len(raw) < 256:
            out.extend(b"U" + bytes([len(raw)]) + raw)
        else:
            out.extend(b"T" + struct.pack("<I", len(raw)) + raw)

    def write(x) -> None:
        if isinstance(x, dict):
            out.extend(b"}(")
            for key, value in x.items():
                write(key)
                write(value)
            out.extend(b"u")
        elif isinstance(x, list):
            out.extend(b"](")
            for value in x:
                write(value)
            out.extend(b"e")
        elif isinstance(x, str):
            string(x.encode("latin1"))
        elif isinstance(x, int):
            out.extend(b"J" + struct.pack("<i", x))
        elif isinstance(x, np.ndarray):
            assert x.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            string(b"b")
            out.extend(b"\x87R(K\x01(")
            for size in x.shape:
                write(int(size))
            out.extend(b"tcnumpy\ndtype\n")
            string(b"u1")
            out.extend(b"K\x00K\x01\x87R(K\x03")
            string(b"|")
            out.extend(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(np.ascontiguousarray(x).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(x))

    write(obj)
    return bytes(out + b".")


def category_pickle(wnids, python2=False, names=True):
    """One MetaOptNet file: data uint8 [N, 84, 84, 3], labels, catname2label (2 images/class)."""
    labels = [MINI_LABELS[w] for w in wnids for _ in range(2)]
    content = {"data": mini_images(len(labels)), "labels": labels}
    if names:
        content["catname2label"] = {w: MINI_LABELS[w] for w in wnids}
    return py2_pickle(content) if python2 else pickle.dumps(content, protocol=2)


def make_mini(root, layout):
    root.mkdir(parents=True, exist_ok=True)
    for split, wnids in MINI_PARTS.items():
        if layout == "pkl":
            class_dict = {w: [2 * k, 2 * k + 1] for k, w in enumerate(wnids)}
            with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
                pickle.dump(
                    {"image_data": mini_images(2 * len(wnids)), "class_dict": class_dict}, f
                )
            continue
        if layout in ("category", "category_py2"):
            data = category_pickle(wnids, python2=layout == "category_py2")
            (root / CATEGORY[split]).write_bytes(data)
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


@pytest.mark.parametrize("layout", ["csv", "pkl", "category", "category_py2", "folders"])
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
    if layout != "csv" and layout != "folders":
        assert train.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30]
        assert small.images[:, 1, 5, 5].tolist() == [0, 10]  # uniform images stay uniform
    # a custom split may draw classes from another split's files
    mixed = write_json(tmp_path / "mixed.json", {"val": ["n01", "n03"]})
    config = MiniImageNetConfig(root=str(root), split_file=mixed, cache_dir=str(tmp_path / "c"))
    assert MiniImageNetSource(config).load("val").class_names == ("n01", "n03")
    # the built-in Ravi split names wnids this fixture lacks
    with pytest.raises(DatasetError, match="'n01532829' of split 'train'.*missing on disk"):
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("train")


def test_python2_pickle_needs_latin1(tmp_path):
    """The fixture really is in Python 2's format: the default ASCII decoding fails on it."""
    path = tmp_path / "py2.pickle"
    data = np.arange(2 * 84 * 84 * 3, dtype=np.int64).astype(np.uint8).reshape(2, 84, 84, 3)
    path.write_bytes(py2_pickle({"data": data, "labels": [64, 64], "catname2label": {"n03": 64}}))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())
    loaded = load_pickle(path, "mini_imagenet", encoding="latin1")
    assert loaded["labels"] == [64, 64] and loaded["catname2label"] == {"n03": 64}
    assert loaded["data"].dtype == np.uint8 and np.array_equal(loaded["data"], data)
    root = tmp_path / "mini"
    root.mkdir()
    path.rename(root / CATEGORY["val"])
    split = write_json(tmp_path / "s.json", {"val": ["n03"]})
    val = MiniImageNetSource(MiniImageNetConfig(root=str(root), split_file=split)).load("val")
    assert val.class_names == ("n03",)
    assert torch.equal(val.images, torch.from_numpy(data).permute(0, 3, 1, 2))


def test_mini_imagenet_category_pickles_without_names(tmp_path):
    """Without catname2label the classes are the file's labels, in increasing order."""
    root = tmp_path / "mini"
    root.mkdir()
    (root / CATEGORY["val"]).write_bytes(category_pickle(["n04", "n03"], names=False))
    data = MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("val")
    assert data.class_names == ("64", "80") and data.images[:, 0, 0, 0].tolist() == [20, 30, 0, 10]
    split = write_json(tmp_path / "s.json", {"val": ["n03"]})
    with pytest.raises(DatasetError, match="has no catname2label"):
        MiniImageNetSource(MiniImageNetConfig(root=str(root), split_file=split)).load("val")


def test_mini_imagenet_category_pickle_errors(tmp_path):
    root = tmp_path / "mini"
    make_mini(root, "category")
    split = write_json(tmp_path / "split.json", MINI_SPLIT)
    source = MiniImageNetSource(MiniImageNetConfig(root=str(root), split_file=split))
    val = root / CATEGORY["val"]
    intact = val.read_bytes()
    val.write_bytes(intact[: len(intact) // 3])  # truncated
    with pytest.raises(DatasetError, match="cannot read pickle") as err:
        source.load("val")
    assert str(val) in str(err.value)
    val.write_bytes(b"PK\x03\x04 a zip, not a pickle")
    with pytest.raises(DatasetError, match="cannot read pickle") as err:
        source.load("val")
    assert str(val) in str(err.value)
    val.write_bytes(pickle.dumps({"image_data": mini_images(2)}, protocol=2))
    with pytest.raises(DatasetError, match="is not a dict with 'data' and 'labels'") as err:
        source.load("val")
    assert str(val) in str(err.value)
    wrong = {"data": mini_images(2).astype(np.float32), "labels": [64, 64]}
    val.write_bytes(pickle.dumps(wrong, protocol=2))
    with pytest.raises(DatasetError, match=r"data must be uint8 \[N, H, W, 3\], got float32"):
        source.load("val")
    short = {"data": mini_images(2), "labels": [64], "catname2label": {"n03": 64}}
    val.write_bytes(pickle.dumps(short, protocol=2))
    with pytest.raises(DatasetError, match="labels must be 2 integers"):
        source.load("val")
    val.unlink()
    (root / CATEGORY["test"]).unlink()
    with pytest.raises(DatasetError, match="missing pickle") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("val")
    assert str(val) in str(err.value)


def test_mini_imagenet_errors(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    with pytest.raises(DatasetError, match="no miniImageNet layout found") as err:
        MiniImageNetSource(MiniImageNetConfig(root=str(root))).load("train")
    assert "mini-imagenet-cache" in str(err.value) and str(root) in str(err.value)
    assert "miniImageNet_category_split_" in str(err.value)
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
        forbid_decoding(patch, ImageFolderSource)
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
    with pytest.raises(ConfigError, match=r"\$\.channels: must be 1 .* or 3"):
        ImageFolderSource(ImageFolderConfig(root=str(flat), channels=2))


def test_image_folder_cub_split(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    names = sorted(n for s in ("train", "val", "test") for n in builtin_split("cub")[s])
    for n in names:
        write_png(cub / "images" / n / "0.jpg", (6, 6), mode="RGB")
    config = ImageFolderConfig(root=str(tmp_path), split="cub", cache_dir=str(tmp_path / "c"))
    val = ImageFolderSource(config).load("val")
    assert val.num_classes == 50 and val.class_names[0] == "002.Laysan_Albatross"
    (cub / "images" / "002.Laysan_Albatross" / "0.jpg").unlink()
    (cub / "images" / "002.Laysan_Albatross").rmdir()
    with pytest.raises(DatasetError, match="'002.Laysan_Albatross'.*missing on disk"):
        ImageFolderSource(config).load("val")


def test_image_folder_points_flower_aircraft_cars_to_their_loaders(tmp_path):
    with pytest.raises(ConfigError, match=r"\$\.split: class folders of vgg_flower are read by"):
        ImageFolderSource(ImageFolderConfig(root=str(tmp_path), split="vgg_flower"))
    with pytest.raises(ConfigError, match=r"\$\.split: 'birds' is not one of 'cub'"):
        ImageFolderSource(ImageFolderConfig(root=str(tmp_path), split="birds"))


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
        "glyphs",
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
    source = create("dataset", "fc100", {"root": str(cifar_root)}, registry=registry)
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
        data = builtin_split(name)
        assert "(MIT)" in data["source"] or "(Apache-2.0)" in data["source"], name
        assert not set(map(str, data["train"])) & set(map(str, data["test"]))
