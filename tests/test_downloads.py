"""``download: true`` against a local HTTP server: never the network.

The server is ``http.server`` in a thread bound to 127.0.0.1 (port 0); it serves tiny archives
built here in each dataset's real layout (the same member paths as the published files, a few
images per class). ``DOWNLOADS`` entries are pointed at it with the fixtures' MD5 sums (kept
absent where the real table has none: FGVC-Aircraft). The path under test is fewmask's own
downloader (``fewmask.datasets.fetch``, urllib); torchvision is only consulted for the URLs and
checksums the table must agree with. A guard refuses any connection that is not to 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import struct
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fewmask.builtins.samplers import EpisodicConfig, EpisodicSampler
from fewmask.cli.errors import describe
from fewmask.datasets import (
    AircraftConfig,
    AircraftSource,
    CarsConfig,
    CarsSource,
    CifarFSConfig,
    CifarFSSource,
    FashionMNISTConfig,
    FashionMNISTSource,
    FC100Config,
    FC100Source,
    OmniglotConfig,
    OmniglotSource,
    VggFlowerConfig,
    VggFlowerSource,
    downloads,
)
from fewmask.datasets.layout import builtin_split
from fewmask.errors import ConfigError, DatasetError, DownloadError

# ----------------------------------------------------------------------------- the server


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """The cache in tmp_path, no proxy, and no connection anywhere but 127.0.0.1."""
    monkeypatch.setenv("FEWMASK_CACHE", str(tmp_path / "envcache"))
    monkeypatch.delenv(downloads.MIRROR_ENV, raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    real = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"a test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)


@pytest.fixture
def server():
    """``files``: URL path -> bytes; a path in ``truncated`` announces its full length and
    sends half of it, then closes the connection."""
    files: dict[str, bytes] = {}
    truncated: set[str] = set()
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if self.path in truncated else body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield SimpleNamespace(url=url, files=files, truncated=truncated, requests=requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def refused_url() -> str:
    """A 127.0.0.1 URL nothing listens on (a port just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def serve(server, monkeypatch, key, payloads, base=None):
    """Serve ``payloads`` (file name -> bytes) and point ``DOWNLOADS[key]`` at them, with the
    payloads' MD5 where the real table has one."""
    resources = []
    for resource in downloads.DOWNLOADS[key]:
        body = payloads[resource.filename]
        server.files[f"/{key}/{resource.filename}"] = body
        md5 = hashlib.md5(body).hexdigest() if resource.md5 else None
        url = f"{base or server.url}/{key}/{resource.filename}"
        resources.append(resource._replace(url=url, md5=md5))
    monkeypatch.setitem(downloads.DOWNLOADS, key, tuple(resources))


def leftovers(root):
    """Hidden temporary files or folders fewmask may have left in ``root``."""
    return sorted(p.name for p in root.rglob(".*")) if root.exists() else []


# ----------------------------------------------------------------------------- archives


def png(value, mode="L", size=(12, 12)) -> bytes:
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    out = io.BytesIO()
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(out, "PNG")
    return out.getvalue()


def jpg(colour, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def mat(variables) -> bytes:
    scipy_io = pytest.importorskip("scipy.io")
    out = io.BytesIO()
    scipy_io.savemat(out, variables)
    return out.getvalue()


def idx(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


OMNI_SPLIT = {
    "train": ["Alpha/character01", "Beta/character01"],
    "val": ["Alpha/character02"],
    "test": ["Beta/character02"],
}


def omniglot_files() -> dict[str, bytes]:
    """The two zips, members ``images_<part>/<Alphabet>/characterNN/<id>_<drawer>.png``."""
    out = {}
    for part, alphabet in (("background", "Alpha"), ("evaluation", "Beta")):
        members = {
            f"images_{part}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png": png(40 * c + d)
            for c in (1, 2)
            for d in (1, 2, 3)
        }
        out[f"images_{part}.zip"] = zipped(members)
    return out


def cifar_files() -> dict[str, bytes]:
    """``cifar-100-python/{train,test,meta}``: 100 fine labels, 2 + 1 images each."""
    import pickle

    fine = sorted(n for s in ("train", "val", "test") for n in builtin_split("cifar_fs")[s])
    members = {}
    for part, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in range(100) for _ in range(per_class)]
        data = np.zeros((len(labels), 3072), np.uint8)
        data[:, :1024] = np.array(labels)[:, None]
        batch = {b"data": data, b"fine_labels": labels}
        members[f"cifar-100-python/{part}"] = pickle.dumps(batch, protocol=2)
    meta = {b"fine_label_names": [n.encode() for n in fine]}
    members["cifar-100-python/meta"] = pickle.dumps(meta, protocol=2)
    return {"cifar-100-python.tar.gz": tar_gz(members)}


def fashion_files() -> dict[str, bytes]:
    out = {}
    for part, count in (("train", 20), ("t10k", 10)):
        images = np.broadcast_to(np.arange(count)[:, None, None], (count, 28, 28))
        out[f"{part}-images-idx3-ubyte.gz"] = idx(images, 2051)
        out[f"{part}-labels-idx1-ubyte.gz"] = idx(np.arange(count) % 10, 2049)
    return out


def flower_files() -> dict[str, bytes]:
    labels = [1, 2, 3, 1, 2, 3]
    colours = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
    members = {f"jpg/image_{i:05d}.jpg": jpg(colours[c]) for i, c in enumerate(labels, 1)}
    return {
        "102flowers.tgz": tar_gz(members),
        "imagelabels.mat": mat({"labels": np.array([labels], dtype=np.uint8)}),
    }


def aircraft_files() -> dict[str, bytes]:
    base = "fgvc-aircraft-2013b/data"
    rows = {
        "train": ["0001 A310", "0002 Cessna 172"],
        "val": ["0003 A310"],
        "test": ["0004 Cessna 172"],
    }
    members = {
        f"{base}/images_variant_{s}.txt": ("\n".join(r) + "\n").encode() for s, r in rows.items()
    }
    members[f"{base}/images_box.txt"] = b"".join(
        f"000{i} 1 1 30 20\n".encode() for i in range(1, 5)
    )
    for i in range(1, 5):
        members[f"{base}/images/000{i}.jpg"] = jpg((200, 10 * i, 0))
    return {"fgvc-aircraft-2013b.tar.gz": tar_gz(members)}


def cars_files() -> dict[str, bytes]:
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    rows = [("00001.jpg", 1), ("00002.jpg", 2), ("00003.jpg", 1), ("00004.jpg", 2)]
    records = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        for field, value in zip(fields[:4], (1, 1, 30, 20), strict=True):
            records[0, i][field] = np.array([[value]], dtype=np.uint16)
        records[0, i]["class"] = np.array([[cls]], dtype=np.uint8)
        records[0, i]["fname"] = np.array([fname])
    devkit = {"devkit/cars_train_annos.mat": mat({"annotations": records})}
    images = {f"cars_train/{fname}": jpg((0, 90 * c, 0)) for fname, c in rows}
    return {"car_devkit.tgz": tar_gz(devkit), "cars_train.tgz": tar_gz(images)}


def split_file(tmp_path, splits) -> str:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(splits))
    return str(path)


# (table key, files, build the source from root / extra options, shape of one image)
CASES = {
    "omniglot": (
        "omniglot",
        omniglot_files,
        lambda t, **o: OmniglotSource(OmniglotConfig(split_file=split_file(t, OMNI_SPLIT), **o)),
        (1, 28, 28),
    ),
    "cifar_fs": (
        "cifar100",
        cifar_files,
        lambda t, **o: CifarFSSource(CifarFSConfig(**o)),
        (3, 32, 32),
    ),
    "fc100": ("cifar100", cifar_files, lambda t, **o: FC100Source(FC100Config(**o)), (3, 32, 32)),
    "fashion_mnist": (
        "fashion_mnist",
        fashion_files,
        lambda t, **o: FashionMNISTSource(FashionMNISTConfig(**o)),
        (1, 28, 28),
    ),
    "vgg_flower": (
        "vgg_flower",
        flower_files,
        lambda t, **o: VggFlowerSource(
            VggFlowerConfig(split_file=split_file(t, {"train": [1, 2, 3]}), **o)
        ),
        (3, 32, 32),
    ),
    "aircraft": (
        "aircraft",
        aircraft_files,
        lambda t, **o: AircraftSource(
            AircraftConfig(split_file=split_file(t, {"train": ["A310", "Cessna 172"]}), **o)
        ),
        (3, 32, 32),
    ),
    "cars": (
        "cars",
        cars_files,
        lambda t, **o: CarsSource(CarsConfig(split_file=split_file(t, {"train": [1, 2]}), **o)),
        (3, 84, 84),
    ),
}


# ----------------------------------------------------------------------------- good archives


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_download_verifies_unpacks_loads_and_samples(dataset, server, tmp_path, monkeypatch):
    key, files, build, shape = CASES[dataset]
    serve(server, monkeypatch, key, files())
    root = tmp_path / "data" / "new"  # does not exist yet: download creates it
    source = build(tmp_path, root=str(root), download=True, cache_dir=str(tmp_path / "c"))
    train = source.load("train")
    assert train.images.shape[1:] == shape and train.images.dtype == torch.uint8
    sampler = EpisodicSampler(EpisodicConfig(ways=2, shots=1, queries=1))
    episodes = sampler.sample_many(train, torch.Generator().manual_seed(0), 3)
    assert len(episodes) == 3 and episodes[0].support_x.shape == (2, *shape)
    for resource in downloads.DOWNLOADS[key]:
        assert (root / resource.into / resource.creates).exists()
        assert not (root / resource.into / resource.filename).is_file() or not resource.is_archive
    assert leftovers(root) == []
    # in place now: loading again (even with download: true) fetches nothing
    count = len(server.requests)
    again = build(tmp_path, root=str(root), download=True, cache_dir=str(tmp_path / "c2"))
    assert torch.equal(again.load("train").images, train.images)
    assert len(server.requests) == count


def test_the_cache_key_ignores_download_and_mirror(server, tmp_path, monkeypatch):
    serve(server, monkeypatch, "cifar100", cifar_files())
    root, cache = str(tmp_path / "cifar"), str(tmp_path / "c")
    CifarFSSource(CifarFSConfig(root=root, download=True, cache_dir=cache)).load("val")
    monkeypatch.setattr(CifarFSSource, "decode", lambda *a: pytest.fail("cache not used"))
    CifarFSSource(CifarFSConfig(root=root, cache_dir=cache)).load("val")
    CifarFSSource(CifarFSConfig(root=root, mirror="http://x.invalid", cache_dir=cache)).load("val")


def test_mirror_option_and_environment(server, tmp_path, monkeypatch):
    """``mirror`` (``<mirror>/<file>``) beats ``$FEWMASK_MIRROR`` (``<env>/<key>/<file>``),
    which beats the table; here the table points at a dead port."""
    serve(server, monkeypatch, "fashion_mnist", fashion_files(), base=refused_url())
    for name, body in fashion_files().items():
        server.files[f"/mine/{name}"] = body
    mine = FashionMNISTConfig(root=str(tmp_path / "a"), download=True, mirror=server.url + "/mine/")
    FashionMNISTSource(mine).load("test")
    assert all(p.startswith("/mine/") for p in server.requests) and len(server.requests) == 4
    monkeypatch.setenv(downloads.MIRROR_ENV, server.url)
    FashionMNISTSource(FashionMNISTConfig(root=str(tmp_path / "b"), download=True)).load("test")
    assert sorted(server.requests[4:]) == sorted(f"/fashion_mnist/{n}" for n in fashion_files())


# ----------------------------------------------------------------------------- failures


def assert_clean_failure(err, root, *needles):
    """A DownloadError (exit 2) naming each needle, the manual layout, nothing left behind."""
    message = str(err.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert "expected layout" not in message  # this one says how to place the files instead
    assert "To place the files by hand" in message and "so that it has the layout" in message
    assert describe(err.value) == (f"DownloadError: {message}", 2)
    assert leftovers(root) == []


def test_truncated_transfer_is_removed_and_named(server, tmp_path, monkeypatch):
    serve(server, monkeypatch, "cifar100", cifar_files())
    server.truncated.add("/cifar100/cifar-100-python.tar.gz")
    root = tmp_path / "cifar"
    with pytest.raises(DownloadError, match=r"is truncated: [\d,]+ of [\d,]+ bytes") as err:
        CifarFSSource(CifarFSConfig(root=str(root), download=True)).load("train")
    assert_clean_failure(err, root, "removed the partial file", server.url, "cifar-100-python/")
    assert list(root.iterdir()) == []  # root was created; nothing else is there


def test_truncated_archive_fails_its_checksum(server, tmp_path, monkeypatch):
    """The server sends a cut archive in full: the length matches, the MD5 does not."""
    files = cifar_files()
    serve(server, monkeypatch, "cifar100", files)
    body = files["cifar-100-python.tar.gz"]
    server.files["/cifar100/cifar-100-python.tar.gz"] = body[: len(body) * 2 // 3]
    root = tmp_path / "cifar"
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        CifarFSSource(CifarFSConfig(root=str(root), download=True)).load("train")
    want = hashlib.md5(body).hexdigest()
    assert_clean_failure(err, root, f"expected {want}", "removed the download")
    assert list(root.iterdir()) == []


def test_truncated_archive_without_checksum_fails_unpacking(server, tmp_path, monkeypatch):
    """FGVC-Aircraft has no published checksum: the gzip stream's CRC and length catch a cut
    archive while unpacking; the archive and the partly unpacked folder are removed."""
    files = aircraft_files()
    serve(server, monkeypatch, "aircraft", files)
    assert downloads.DOWNLOADS["aircraft"][0].checksums == {}
    body = files["fgvc-aircraft-2013b.tar.gz"]
    server.files["/aircraft/fgvc-aircraft-2013b.tar.gz"] = body[:-12]
    root = tmp_path / "air"
    source = AircraftSource(AircraftConfig(root=str(root), download=True))
    with pytest.raises(DownloadError, match="truncated or corrupt") as err:
        source.load("train")
    assert_clean_failure(err, root, "partly unpacked folder", "fgvc-aircraft-2013b")
    assert list(root.iterdir()) == []


def test_wrong_checksum_is_removed_and_named(server, tmp_path, monkeypatch):
    serve(server, monkeypatch, "omniglot", omniglot_files())
    bad = downloads.DOWNLOADS["omniglot"][1]._replace(md5="0" * 32)
    monkeypatch.setitem(downloads.DOWNLOADS, "omniglot", (downloads.DOWNLOADS["omniglot"][0], bad))
    root = tmp_path / "omni"
    source = OmniglotSource(OmniglotConfig(root=str(root), download=True))
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        source.load("train")
    assert_clean_failure(err, root, "expected 00000000", "images_evaluation.zip", "removed")
    # the first zip verified and stays; the second never appears under its name
    assert sorted(p.name for p in (root / "omniglot-py").iterdir()) == ["images_background.zip"]


def test_server_down_names_the_url_and_the_manual_layout(monkeypatch, tmp_path, server):
    serve(server, monkeypatch, "cifar100", cifar_files(), base=refused_url())
    url = downloads.DOWNLOADS["cifar100"][0].url
    root = tmp_path / "cifar"
    with pytest.raises(DownloadError, match="connection refused") as err:
        FC100Source(FC100Config(root=str(root), download=True)).load("test")
    assert_clean_failure(err, root, f"cannot download {url}", "ROOT/cifar-100-python/meta")
    assert list(root.iterdir()) == []


def test_http_error_and_the_cars_note(server, tmp_path, monkeypatch):
    serve(server, monkeypatch, "cars", cars_files())
    server.files.clear()  # the server answers 404, as Stanford's old URLs do
    root = tmp_path / "cars"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        CarsSource(CarsConfig(root=str(root), download=True)).load("train")
    assert_clean_failure(err, root, "offline since 2023", "mirror", "car_devkit.tgz")


def test_an_archive_reaching_outside_root_is_refused(server, tmp_path, monkeypatch):
    evil = {"cifar-100-python.tar.gz": tar_gz({"../escaped": b"x", "cifar-100-python/meta": b""})}
    serve(server, monkeypatch, "cifar100", evil)
    root = tmp_path / "cifar"
    with pytest.raises(DownloadError, match="points outside the folder") as err:
        CifarFSSource(CifarFSConfig(root=str(root), download=True)).load("train")
    assert not (tmp_path / "escaped").exists()
    assert_clean_failure(err, root, "refused the archive")


def test_what_is_in_place_is_used_and_never_touched(tmp_path, monkeypatch):
    """A user's own copy in root: nothing is fetched (the table points at a dead port) and
    nothing of theirs is changed; an incomplete copy is the loader's usual layout error."""
    dead = refused_url()
    for key in ("cifar100",):
        monkeypatch.setitem(
            downloads.DOWNLOADS,
            key,
            tuple(r._replace(url=f"{dead}/{r.filename}") for r in downloads.DOWNLOADS[key]),
        )
    root = tmp_path / "cifar"
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in tarfile_members(cifar_files()["cifar-100-python.tar.gz"]).items():
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("mine")
    before = files_of(root)
    data = CifarFSSource(CifarFSConfig(root=str(root), download=True)).load("test")
    assert data.num_classes == 20
    (folder / "meta").unlink()
    with pytest.raises(DatasetError, match="missing CIFAR-100 pickle"):
        CifarFSSource(CifarFSConfig(root=str(root), download=True)).load("test")
    assert files_of(root) == [b for b in before if b[0] != "meta"]


def files_of(root):
    return sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file())


def tarfile_members(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_download_needs_a_root(tmp_path):
    with pytest.raises(ConfigError, match=r"\$\.download: needs root"):
        FashionMNISTSource(FashionMNISTConfig(download=True))
    with pytest.raises(DownloadError, match="root .* is a file"):
        (tmp_path / "f").write_text("")
        CifarFSSource(CifarFSConfig(root=str(tmp_path / "f"), download=True)).load("train")


# ----------------------------------------------------------------------------- the table


def test_the_table_agrees_with_torchvision():
    """URLs and MD5 sums are torchvision's (read from its classes; nothing is downloaded)."""
    tv = pytest.importorskip("torchvision.datasets")
    table = {r.filename: r for rs in downloads.DOWNLOADS.values() for r in rs}
    for name, md5 in tv.Omniglot.zips_md5.items():
        resource = table[f"{name}.zip"]
        assert resource.md5 == md5
        assert resource.url == f"{tv.Omniglot.download_url_prefix}/{name}.zip"
    cifar = table[tv.CIFAR100.filename]
    assert (cifar.url, cifar.md5) == (tv.CIFAR100.url, tv.CIFAR100.tgz_md5)
    for name, md5 in tv.FashionMNIST.resources:
        assert table[name].md5 == md5
        assert table[name].url == tv.FashionMNIST.mirrors[0] + name
    for name, md5 in (tv.Flowers102._file_dict[k] for k in ("image", "label")):
        assert table[name].md5 == md5
        assert table[name].url == tv.Flowers102._download_url_prefix + name
    aircraft = table["fgvc-aircraft-2013b.tar.gz"]
    assert aircraft.url == tv.FGVCAircraft._URL and aircraft.checksums == {}


def test_the_command_exits_2_with_one_message(tmp_path, capsys):
    from fewmask.cli import main

    dead = refused_url()
    root = tmp_path / "cifar"
    dataset = (
        f"dataset={{name: cifar_fs, options: {{root: {root}, download: true, mirror: {dead}}}}}"
    )
    config = str(Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml")
    code = main(["train", config, "-o", dataset, "-o", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (
        f"fewmask: DownloadError: cifar_fs: cannot download {dead}/cifar-100-python.tar.gz" in err
    )
    assert "connection refused" in err and "ROOT/cifar-100-python/train" in err


def test_a_file_url_mirror_works_offline(tmp_path):
    """A shared folder holding the original files serves as a mirror (``file://``), with the
    table's own checksums: here the fixture's, set as the table's."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    resources = []
    for name, body in fashion_files().items():
        (shelf / name).write_bytes(body)
        (resource,) = [r for r in downloads.DOWNLOADS["fashion_mnist"] if r.filename == name]
        resources.append(resource._replace(md5=hashlib.md5(body).hexdigest()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(downloads.DOWNLOADS, "fashion_mnist", tuple(resources))
        root = tmp_path / "fm"
        config = FashionMNISTConfig(root=str(root), download=True, mirror=shelf.as_uri())
        assert FashionMNISTSource(config).load("test").num_classes == 10
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(
        fashion_files()
    )


def test_a_mirror_must_be_a_url(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"\$\.mirror: must be an http://, https:// or file://"):
        CifarFSSource(CifarFSConfig(root=str(tmp_path), mirror="ftp.example.org/cifar"))
    monkeypatch.setenv(downloads.MIRROR_ENV, "/srv/mirror")
    with pytest.raises(DownloadError, match=r"\$FEWMASK_MIRROR must be an http://"):
        CifarFSSource(CifarFSConfig(root=str(tmp_path / "c"), download=True)).load("train")
