"""The decoded cache is memory-mapped: a split larger than the process's memory limit trains.

The limit is RLIMIT_DATA, not RLIMIT_AS. RLIMIT_AS counts every mapping, file-backed ones
included, so no memory-mapped file can exceed it by construction (and torch's CUDA build maps
~3 GB of address space at import); RLIMIT_DATA (Linux >= 4.7) counts the private writable
memory a process cannot give back (heap, anonymous mappings), i.e. what "does not fit in
memory" means for a process, while the read-only shared mapping of the cache stays page cache
the kernel may drop. The child measures its own VmData after importing torch and fewmask, sets
the limit a few hundred MB above it, and first shows that the same limit stops reading the
cache into memory (the previous cache format's way, and the control that makes this test able
to fail), then samples episodes and trains two iterations from the mapped cache. The cache
(1.5x the limit) is written sparsely, with one marker byte per class, so it costs little disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from fewmask.datasets import cache
from fewmask.datasets.base import CachedSource, CachedSourceConfig

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path

    import numpy as np
    import torch

    from fewmask import CachedSource, CachedSourceConfig, TrainConfig, Trainer, create
    from fewmask.datasets import cache

    HEADROOM = 300 << 20
    SHAPE = (3, 32, 32)


    class BigSource(CachedSource):
        name = "big"
        layout = "ROOT/marker"

        def source_files(self, split):
            return [Path(self.config.root) / "marker"]

        def decode(self, split):
            raise AssertionError("decoded: the cache was not used")


    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024


    work = Path(sys.argv[1])
    (work / "data").mkdir()
    (work / "data" / "marker").write_text("x")
    source = BigSource(CachedSourceConfig(root=str(work / "data"), cache_dir=str(work / "c")))
    path = cache.cache_path(source.config.cache_dir, source.name, source.cache_key("train"))
    path.parent.mkdir(parents=True)

    baseline = vm("VmData")
    limit = baseline + HEADROOM
    per_class = 100
    classes = int(1.5 * limit) // (per_class * 3 * 32 * 32) + 1
    shape = (classes * per_class, *SHAPE)
    images_file = cache.images_file_for(path)
    array = np.lib.format.open_memmap(images_file, "w+", np.uint8, shape)  # sparse
    markers = np.arange(classes) % 251 + 1
    array[::per_class, 0, 0, 0] = markers  # first image of each class
    array.flush()
    del array
    labels = torch.arange(classes).repeat_interleave(per_class)
    fingerprint = cache.fingerprint(source.source_files("train"), source.name)
    names = [f"c{i}" for i in range(classes)]
    cache.write_index(path, fingerprint, images_file, shape, labels, names)
    del labels
    cache_bytes = images_file.stat().st_size

    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        np.load(images_file)  # the whole split in memory, as the previous cache read it
        control = "loaded"
    except MemoryError:
        control = "MemoryError"

    data = source.load("train")
    first = torch.cumsum(data.class_counts, 0) - data.class_counts
    markers_ok = data.images[first, 0, 0, 0].tolist() == markers.tolist()
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 1, "queries": 2})
    episodes = sampler.sample_many(data, torch.Generator().manual_seed(0), 8)
    backbone = create(
        "backbone", "omniglot_mlp", {"hidden": [32, 16]}, input_shape=SHAPE, num_classes=5
    )
    trainer = Trainer(
        backbone,
        create("masker", "metaticket"),
        create("inner_optimizer", "sgd"),
        create("objective", "metaticket", {"warmup": 1}),
        sampler,
        {"train": data, "test": data},
        TrainConfig(iterations=2, meta_batch_size=2, test_episodes=4, progress=False),
    )
    results = trainer.fit()
    print(json.dumps({
        "baseline": baseline, "limit": limit, "cache_bytes": cache_bytes, "control": control,
        "markers_ok": markers_ok, "episodes": len(episodes),
        "accuracy": results["accuracy"], "vmdata_end": vm("VmData"),
    }))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_split_larger_than_the_memory_limit_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cache_bytes"] > 1.4 * out["limit"]  # the split does not fit under the limit
    assert out["control"] == "MemoryError"  # the limit holds: reading it whole fails
    assert out["markers_ok"] and out["episodes"] == 8
    assert 0.0 <= out["accuracy"] <= 1.0
    assert out["vmdata_end"] <= out["limit"]


# ----------------------------------------------------------------------------- the cache files


class Tiny(CachedSource):
    name = "tiny"
    layout = "ROOT/source.npy"

    def source_files(self, split):
        return [self.root_folder() / "source.npy"]

    def decode(self, split):
        images = np.load(self.source_files(split)[0])
        self.decoded = getattr(self, "decoded", 0) + 1
        labels = torch.arange(len(images)) // 2
        return torch.from_numpy(images), labels, [f"c{i}" for i in range(len(images) // 2)]


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    np.save(root / "source.npy", images)
    return root, images, tmp_path / "c"


def mapped_files() -> dict[str, str]:
    """``{path: permissions}`` of the ``.npy`` files this process maps."""
    with open("/proc/self/maps") as maps:
        rows = [line.split() for line in maps if line.rstrip().endswith(".npy")]
    return {row[-1]: row[1] for row in rows}


def test_cached_images_are_memory_mapped_read_only(tiny):
    root, images, cache_dir = tiny
    first = Tiny(CachedSourceConfig(root=str(root), cache_dir=str(cache_dir)))
    decoded = first.load("train")
    assert first.decoded == 1 and np.array_equal(decoded.images.numpy(), images)
    again = Tiny(CachedSourceConfig(root=str(root), cache_dir=str(cache_dir)))
    data = again.load("train")
    assert not hasattr(again, "decoded")  # from the cache
    assert np.array_equal(data.images.numpy(), images) and data.class_names[0] == "c0"
    files = list((cache_dir / "tiny").glob("train-*.npy"))
    assert len(files) == 1
    if os.path.exists("/proc/self/maps"):
        assert mapped_files()[str(files[0])] == "r--s"  # read-only, shared: page cache


def test_a_truncated_or_missing_images_file_is_decoded_again(tiny):
    root, images, cache_dir = tiny
    config = CachedSourceConfig(root=str(root), cache_dir=str(cache_dir))
    Tiny(config).load("train")
    (npy,) = (cache_dir / "tiny").glob("train-*.npy")
    npy.write_bytes(npy.read_bytes()[:-10])
    source = Tiny(config)
    assert np.array_equal(source.load("train").images.numpy(), images) and source.decoded == 1
    (npy,) = (cache_dir / "tiny").glob("train-*.npy")
    npy.unlink()
    source = Tiny(config)
    assert np.array_equal(source.load("train").images.numpy(), images) and source.decoded == 1


def test_a_changed_source_replaces_the_images_file(tiny):
    root, images, cache_dir = tiny
    config = CachedSourceConfig(root=str(root), cache_dir=str(cache_dir))
    Tiny(config).load("train")
    (old,) = (cache_dir / "tiny").glob("train-*.npy")
    np.save(root / "source.npy", 255 - images)
    os.utime(root / "source.npy", ns=(7, 7))
    data = Tiny(config).load("train")
    assert np.array_equal(data.images.numpy(), 255 - images)
    (new,) = (cache_dir / "tiny").glob("train-*.npy")
    assert new != old and not old.exists()


def test_an_unwritable_cache_warns_and_leaves_no_images_file(tiny, monkeypatch):
    root, images, cache_dir = tiny
    config = CachedSourceConfig(root=str(root), cache_dir=str(cache_dir))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "write_index", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = Tiny(config).load("train")
    assert np.array_equal(data.images.numpy(), images)
    assert any("cannot write the dataset cache" in str(w.message) for w in caught)
    assert list((cache_dir / "tiny").glob("*")) == []


# ----------------------------------------------------------------------------- decoding into it


@pytest.fixture
def folders(tmp_path):
    """``ROOT/{train,val,test}/<class>/*.png``: 3 classes x 3 images per split."""
    from PIL import Image

    root = tmp_path / "folders"
    for split in ("train", "val", "test"):
        for c in range(3):
            for i in range(3):
                path = root / split / f"class{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (10, 8), (80 * c, 20 * i, 7)).save(path)
    return root


def mapping_of(tensor: torch.Tensor) -> tuple[str, str] | None:
    """``(permissions, file)`` of the mapping holding ``tensor``'s data, if it is a file's."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[1], fields[-1] if len(fields) > 5 else ""
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_a_split_is_decoded_straight_into_its_cache_file(folders, tmp_path, monkeypatch):
    """Decoders that allocate with ``new_images`` (image files, archives) write the split into
    the cache's own memory-mapped file: no in-memory copy of the whole split, no second write;
    the first load already returns the read-only mapping."""
    from fewmask.datasets import ImageFolderConfig, ImageFolderSource

    monkeypatch.setattr(cache.np, "save", lambda *a, **k: pytest.fail("a second copy"))
    config = ImageFolderConfig(root=str(folders), image_size=8, cache_dir=str(tmp_path / "c"))
    data = ImageFolderSource(config).load("train")
    (npy,) = (tmp_path / "c" / "image_folder").glob("train-*.npy")
    assert mapping_of(data.images) == ("r--s", str(npy))
    assert data.images.shape == (9, 3, 8, 8)
    assert data.images[:, 0, 0, 0].tolist() == [0, 0, 0, 80, 80, 80, 160, 160, 160]
    assert data.images[:3, 1, 0, 0].tolist() == [0, 20, 40]


def test_a_decode_that_fails_halfway_leaves_no_images_file(folders, tmp_path, monkeypatch):
    from fewmask.datasets import ImageFolderConfig, ImageFolderSource
    from fewmask.datasets import images as images_module
    from fewmask.errors import DatasetError

    real, calls = images_module.decode_image, []

    def fail_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise DatasetError("image_folder: cannot decode image x.png: truncated")
        return real(*args, **kwargs)

    monkeypatch.setattr(images_module, "decode_image", fail_on_the_fifth)
    config = ImageFolderConfig(root=str(folders), image_size=8, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DatasetError, match="truncated"):
        ImageFolderSource(config).load("train")
    assert list((tmp_path / "c").rglob("*.npy")) == []
    monkeypatch.undo()
    assert ImageFolderSource(config).load("train").images.shape == (9, 3, 8, 8)


def test_a_write_keeps_the_images_file_of_a_write_that_started_later(tiny):
    """Two processes decoding one split at once (torchrun ranks) do not delete each other's
    file in progress: a write removes only the files of writes that started before it."""
    root, _, cache_dir = tiny
    config = CachedSourceConfig(root=str(root), cache_dir=str(cache_dir))
    source = Tiny(config)
    path = cache.cache_path(str(cache_dir), "tiny", source.cache_key("train"))
    earlier = cache.images_file_for(path)
    path.parent.mkdir(parents=True)
    earlier.write_bytes(b"an abandoned write")
    source.load("train")
    later = cache.images_file_for(path)
    later.write_bytes(b"another process, still decoding")
    (ours,) = [f for f in path.parent.glob("train-*.npy") if f != later]
    assert not earlier.exists() and later.exists()
    os.utime(root / "source.npy", ns=(9, 9))  # changed source: a new write starts after both
    Tiny(config).load("train")
    (newest,) = path.parent.glob("train-*.npy")
    assert newest not in (ours, later)
