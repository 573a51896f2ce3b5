"""Flower / Aircraft / Cars (fewmask.datasets.fine_grained): native archives and class folders."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fewmask.datasets import fine_grained, register
from fewmask.datasets.fine_grained import (
    AircraftConfig,
    AircraftSource,
    CarsConfig,
    CarsSource,
    VggFlowerConfig,
    VggFlowerSource,
)
from fewmask.errors import ConfigError, DatasetError
from fewmask.factory import create
from fewmask.registry import Provider, Registry

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 200, 0)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWMASK_CACHE", str(tmp_path / "envcache"))


def boxed_jpg(path, size=(40, 30), box=(10, 5, 20, 15), inside=RED, outside=BLUE):
    """A JPEG of colour ``outside`` with the 0-based half-open ``box`` filled with ``inside``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, outside)
    image.paste(inside, box)
    image.save(path, quality=100, subsampling=0)  # 4:4:4: no chroma bleed


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(fine_grained, "decode_cropped", fail)


def assert_colour(images, colour):
    mean = images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=30), mean


# ----------------------------------------------------------------------------- aircraft

AIR_VARIANTS = {
    "train": [("0001", "F-16A/B"), ("0002", "Cessna 172")],
    "val": [("0003", "F-16A/B"), ("0004", "A310")],
    "test": [("0005", "Cessna 172"), ("0006", "A310")],
}


@pytest.fixture
def aircraft_root(tmp_path):
    root = tmp_path / "air"
    data = root / "fgvc-aircraft-2013b" / "data"
    boxes = []
    for part, rows in AIR_VARIANTS.items():
        data.mkdir(parents=True, exist_ok=True)
        lines = [f"{i} {v}" for i, v in rows]
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
        for image_id, _ in rows:
            boxed_jpg(data / "images" / f"{image_id}.jpg")
            boxes.append(f"{image_id} 11 6 20 15")  # 1-based inclusive = PIL box (10, 5, 20, 15)
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root


def air_split(tmp_path):
    return write_json(
        tmp_path / "air_split.json",
        {"train": ["F-16A/B", "Cessna 172"], "val": ["A310"], "test": ["A310"]},
    )


def test_aircraft_pools_variants_crops_to_box_and_caches(aircraft_root, tmp_path, monkeypatch):
    before = tree(aircraft_root)
    cfg = AircraftConfig(
        root=str(aircraft_root), split_file=air_split(tmp_path), cache_dir=str(tmp_path / "c")
    )
    data = AircraftSource(cfg).load("train")
    assert data.images.shape == (4, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.class_names == ("Cessna 172", "F-16A/B")  # sorted; spaces and '/' kept
    assert data.labels.tolist() == [0, 0, 1, 1]  # train+val+test lists pooled
    assert_colour(data.images, RED)  # only the box region survives
    assert list((tmp_path / "c" / "aircraft").glob("train-*.pt"))
    forbid_decoding(monkeypatch)
    again = AircraftSource(cfg).load("train")
    assert torch.equal(again.images, data.images)
    assert tree(aircraft_root) == before  # nothing written next to the data
    # ROOT may also be the data folder itself; image_size is honoured
    small = AircraftConfig(
        root=str(aircraft_root / "fgvc-aircraft-2013b" / "data"),
        split_file=air_split(tmp_path),
        image_size=16,
        cache_dir=str(tmp_path / "c2"),
    )
    monkeypatch.undo()
    assert AircraftSource(small).load("test").images.shape == (2, 3, 16, 16)


def test_aircraft_errors(aircraft_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        AircraftSource(AircraftConfig(root=str(tmp_path / "nowhere"))).load("train")
    with pytest.raises(DatasetError, match="unknown split 'bogus'"):
        AircraftSource(AircraftConfig(root=str(aircraft_root))).load("bogus")
    # the built-in split names variants that are not in the fixture
    with pytest.raises(DatasetError, match="missing on disk"):
        AircraftSource(AircraftConfig(root=str(aircraft_root))).load("train")
    data = aircraft_root / "fgvc-aircraft-2013b" / "data"
    (data / "images_box.txt").unlink()
    with pytest.raises(DatasetError, match="images_box.txt") as err:
        AircraftSource(AircraftConfig(root=str(aircraft_root))).load("train")
    assert "expected layout" in str(err.value)
    data.rename(tmp_path / "moved")  # fgvc-aircraft-2013b/ is left without its data/
    with pytest.raises(DatasetError, match="no data/ folder in") as err:
        AircraftSource(AircraftConfig(root=str(aircraft_root))).load("train")
    assert str(aircraft_root / "fgvc-aircraft-2013b") in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="neither the native archive nor class folders") as err:
        AircraftSource(AircraftConfig(root=str(empty))).load("train")
    assert "images_variant_" in str(err.value) and "ROOT/<variant>/" in str(err.value)


# ----------------------------------------------------------------------------- vgg_flower

FLOWER_COLOURS = {1: RED, 2: GREEN, 3: BLUE}


@pytest.fixture
def flower_root(tmp_path):
    root = tmp_path / "flowers"
    labels = [1, 2, 3, 1, 2, 3]
    for i, label in enumerate(labels, 1):
        colour = FLOWER_COLOURS[label]
        boxed_jpg(root / "jpg" / f"image_{i:05d}.jpg", (50, 20), (0, 0, 50, 20), colour, colour)
    return root, labels


def test_vgg_flower_labels_from_mat_and_cache(flower_root, tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    root, labels = flower_root
    scipy_io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    before = tree(root)
    split = write_json(tmp_path / "fs.json", {"train": [3, "1"], "val": [2], "test": [2]})
    cfg = VggFlowerConfig(root=str(root), split_file=split, cache_dir=str(tmp_path / "c"))
    data = VggFlowerSource(cfg).load("train")
    assert data.images.shape == (4, 3, 32, 32)  # 50x20 squashed to the default 32
    assert data.class_names == ("1", "3") and data.labels.tolist() == [0, 0, 1, 1]
    assert_colour(data.images[data.labels == 0], RED)
    assert_colour(data.images[data.labels == 1], BLUE)
    forbid_decoding(monkeypatch)
    assert torch.equal(VggFlowerSource(cfg).load("train").images, data.images)
    assert list((tmp_path / "c" / "vgg_flower").glob("train-*.pt"))
    assert tree(root) == before
    with pytest.raises(DatasetError, match="missing on disk"):  # built-in: 71 labels absent
        VggFlowerSource(VggFlowerConfig(root=str(root))).load("train")


def test_vgg_flower_errors(flower_root, tmp_path, monkeypatch):
    root, _ = flower_root
    with pytest.raises(ConfigError, match=r"\$\.root: is empty"):
        VggFlowerSource(VggFlowerConfig(root=""))
    with pytest.raises(DatasetError, match="unknown split 'bogus'"):
        VggFlowerSource(VggFlowerConfig(root=str(root))).load("bogus")
    with pytest.raises(DatasetError, match="imagelabels.mat") as err:
        VggFlowerSource(VggFlowerConfig(root=str(root))).load("train")
    assert str(root / "imagelabels.mat") in str(err.value) and "expected layout" in str(err.value)
    (root / "imagelabels.mat").write_bytes(b"not a mat file")
    (root / "jpg").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="missing image folder") as err:
        VggFlowerSource(VggFlowerConfig(root=str(root))).load("train")
    assert str(root / "jpg") in str(err.value)
    (tmp_path / "elsewhere").rename(root / "jpg")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DatasetError, match="pip install scipy"):
        VggFlowerSource(VggFlowerConfig(root=str(root))).load("train")


# ----------------------------------------------------------------------------- cars

CARS_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


@pytest.fixture
def cars_root(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "cars"
    rows = [("00001.jpg", 1), ("00002.jpg", 2), ("00003.jpg", 1), ("00004.jpg", 3)]
    records = np.zeros((1, len(rows)), dtype=[(f, "O") for f in CARS_FIELDS])
    for i, (fname, cls) in enumerate(rows):
        boxed_jpg(root / "cars_train" / fname, (60, 40), (20, 10, 40, 30), GREEN, BLUE)
        for field, value in zip(CARS_FIELDS[:4], (21, 11, 40, 30), strict=True):
            records[0, i][field] = np.array([[value]], dtype=np.uint16)
        records[0, i]["class"] = np.array([[cls]], dtype=np.uint8)
        records[0, i]["fname"] = np.array([fname])
    (root / "devkit").mkdir()
    scipy_io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": records})
    (root / "cars_test").mkdir()  # ignored, as by the authors
    return root


def test_cars_bbox_crop_size_and_cache(cars_root, tmp_path, monkeypatch):
    before = tree(cars_root)
    split = write_json(tmp_path / "cs.json", {"train": [1, 3], "val": [2], "test": [2]})
    cfg = CarsConfig(root=str(cars_root), split_file=split, cache_dir=str(tmp_path / "c"))
    data = CarsSource(cfg).load("train")
    assert data.images.shape == (3, 3, 84, 84) and data.images.dtype == torch.uint8
    assert data.class_names == ("1", "3") and data.labels.tolist() == [0, 0, 1]
    assert_colour(data.images, GREEN)
    forbid_decoding(monkeypatch)
    assert torch.equal(CarsSource(cfg).load("train").images, data.images)
    assert list((tmp_path / "c" / "cars").glob("train-*.pt"))
    assert tree(cars_root) == before


def test_cars_errors(cars_root, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        CarsSource(CarsConfig(root=str(tmp_path / "nowhere"))).load("train")
    with pytest.raises(DatasetError, match="unknown split 'bogus'"):
        CarsSource(CarsConfig(root=str(cars_root))).load("bogus")
    with pytest.raises(DatasetError, match="missing on disk"):  # built-in split: 98 classes
        CarsSource(CarsConfig(root=str(cars_root))).load("train")
    split = write_json(tmp_path / "cs.json", {"train": [1], "val": [2], "test": [2]})
    (cars_root / "cars_train" / "00002.jpg").unlink()
    with pytest.raises(DatasetError, match="00002.jpg"):
        CarsSource(CarsConfig(root=str(cars_root), split_file=split)).load("val")
    mat = cars_root / "devkit" / "cars_train_annos.mat"
    mat.unlink()
    with pytest.raises(DatasetError, match="cars_train_annos.mat") as err:
        CarsSource(CarsConfig(root=str(cars_root), split_file=split)).load("train")
    assert str(mat) in str(err.value)


# ----------------------------------------------------------------------------- registration


def test_registered_with_the_disk_loaders(aircraft_root, tmp_path):
    registry = Registry()
    register(registry.scoped(Provider("fewmask", "fewmask", "0")))
    assert {"aircraft", "vgg_flower", "cars"} <= set(registry.names("dataset"))
    options = {"root": str(aircraft_root), "split_file": air_split(tmp_path)}
    source = create("dataset", "aircraft", options, registry=registry)
    assert source.load("val").num_classes == 1


# ----------------------------------------------------------------------------- class folders


def test_flower_class_folders_every_naming_style_and_the_builtin_split(tmp_path):
    flowers = tmp_path / "flowers_by_class"
    for i in range(1, 103):  # every naming style the id matcher accepts
        name = (f"class_{i:05d}", f"{i:03d}", f"{i}.some name")[i % 3]
        boxed_jpg(flowers / name / "0.jpg", (6, 6), (0, 0, 6, 6), GREEN, GREEN)
    (flowers / "notes").mkdir()  # not a class id: ignored
    source = VggFlowerSource(VggFlowerConfig(root=str(flowers), cache_dir=str(tmp_path / "c")))
    splits = [source.load(s) for s in ("train", "val", "test")]
    assert [s.num_classes for s in splits] == [71, 15, 16]
    ids = [int(n) for n in splits[0].class_names]
    assert ids == sorted(ids) and splits[0].images.shape[1:] == (3, 32, 32)
    (flowers / "7").mkdir()  # a second folder for class 7 (already class_00007)
    with pytest.raises(DatasetError, match="both match class '7'"):
        VggFlowerSource(VggFlowerConfig(root=str(flowers))).load("train")


def test_flower_native_archive_and_class_folders_agree(flower_root, tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root, labels = flower_root
    scipy_io.savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    folders = tmp_path / "by_class"
    for i, label in enumerate(labels, 1):
        target = folders / f"{label:03d}" / f"image_{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((root / "jpg" / f"image_{i:05d}.jpg").read_bytes())
    split = write_json(tmp_path / "fs.json", {"train": [3, 1], "val": [2], "test": [2]})
    native = VggFlowerSource(VggFlowerConfig(root=str(root), split_file=split)).load("train")
    by_class = VggFlowerSource(VggFlowerConfig(root=str(folders), split_file=split)).load("train")
    assert by_class.class_names == native.class_names == ("1", "3")
    assert torch.equal(by_class.images, native.images)


def test_aircraft_and_cars_class_folders(tmp_path):
    planes = tmp_path / "planes"
    for variant in ("F-16A_B", "Cessna 172", "A310"):
        for i in range(2):
            boxed_jpg(planes / variant / f"{i}.jpg")
    split = write_json(tmp_path / "air.json", {"train": ["F-16A/B", "Cessna 172"], "val": ["A310"]})
    train = AircraftSource(AircraftConfig(root=str(planes), split_file=split)).load("train")
    assert train.class_names == ("Cessna 172", "F-16A/B")  # as from the archive's lists
    assert train.images.shape == (4, 3, 32, 32)
    mean = train.images.float().mean(dim=(0, 2, 3))
    assert mean[2] > mean[0], "whole images (mostly blue), no box crop without the archive"
    cars = tmp_path / "cars"
    for cls in (1, 2, 3):
        boxed_jpg(cars / f"{cls:03d}.Some Car {cls}" / "0.jpg")
    split = write_json(tmp_path / "cars.json", {"train": [1, 3], "val": [2], "test": [4]})
    source = CarsSource(CarsConfig(root=str(cars), split_file=split, image_size=16))
    assert source.load("train").class_names == ("1", "3")
    with pytest.raises(DatasetError, match="class 4 of split 'test'.*no matching class folder"):
        source.load("test")
