"""``download: true``: where each dataset's files come from, and putting them into ``root``.

``DOWNLOADS`` lists, per dataset, the files with their URL and checksum. The URLs and MD5 sums
are torchvision's (its ``Omniglot``, ``CIFAR100``, ``FashionMNIST``, ``Flowers102`` and
``FGVCAircraft`` classes, and ``StanfordCars`` up to torchvision 0.15);
``tests/test_downloads.py`` checks them against the torchvision installed. Two honest gaps:

- FGVC-Aircraft: torchvision pins no checksum, nor does fewmask; what is verified is the
  archive's length against ``Content-Length`` and the gzip CRC-32 and length over the whole
  stream (read in full while unpacking).
- Stanford Cars: the original URLs have been offline since 2023 (torchvision dropped the
  download); set ``mirror`` to a server holding ``cars_train.tgz`` and ``car_devkit.tgz``. The
  MD5 sums still identify the original files.

Where a file is fetched from, first match wins: the loader's ``mirror`` option (a base URL
holding the dataset's files: ``<mirror>/<file name>``), then ``$FEWMASK_MIRROR`` (a base URL
with one folder per table key: ``<FEWMASK_MIRROR>/<key>/<file name>``), then the table.
A file, or an archive's top-level folder, already in place is never fetched again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from fewmask.datasets import fetch
from fewmask.errors import DownloadError

MIRROR_ENV = "FEWMASK_MIRROR"


class Resource(NamedTuple):
    """One file a dataset downloads."""

    url: str
    """Its default URL; the file name is the URL's last part."""
    into: str
    """The folder under ``root`` it goes into (``""``: ``root`` itself)."""
    creates: str
    """What exists under ``into`` once done: the file, or the archive's top-level folder."""
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.filename.endswith((".tar", ".tar.gz", ".tgz", ".zip")) and (
            self.creates != self.filename
        )

    @property
    def checksums(self) -> dict[str, str]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v}


_OMNIGLOT = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FLOWERS = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
_CARS = "https://ai.stanford.edu/~jkrause/"

DOWNLOADS: dict[str, tuple[Resource, ...]] = {
    "omniglot": tuple(
        # read in place by the loader: the zips are the layout, nothing is unpacked
        Resource(_OMNIGLOT + f"{name}.zip", "omniglot-py", f"{name}.zip", md5)
        for name, md5 in (
            ("images_background", "68d2efa1b9178cc56df9314c21c6e718"),
            ("images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811"),
        )
    ),
    "cifar100": (
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "",
            "cifar-100-python",
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    "fashion_mnist": tuple(
        Resource(_FASHION + name, "FashionMNIST/raw", name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    "vgg_flower": (
        Resource(_FLOWERS + "102flowers.tgz", "", "jpg", "52808999861908f626f3c1f4e79d11fa"),
        Resource(
            _FLOWERS + "imagelabels.mat", "", "imagelabels.mat", "e0620be6f572b9609742df49c70aed4d"
        ),
    ),
    "aircraft": (
        Resource(
            "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/"
            "fgvc-aircraft-2013b.tar.gz",
            "",
            "fgvc-aircraft-2013b",
        ),
    ),
    "cars": (
        Resource(_CARS + "cars/car_devkit.tgz", "", "devkit", "c3b158d763b6e2245038c8ad08e45376"),
        Resource(
            _CARS + "car196/cars_train.tgz", "", "cars_train", "065e5b463ae28d29e77c1b4b166cfe61"
        ),
    ),
}
"""Per table key, the files ``download: true`` fetches. Tests and private mirrors may replace
entries (or set ``mirror`` / ``$FEWMASK_MIRROR``)."""

NOTES = {
    "cars": "Stanford's original URLs have been offline since 2023: set the option mirror (or "
    f"${MIRROR_ENV}) to a server holding cars_train.tgz and car_devkit.tgz.",
}


SCHEMES = ("http://", "https://", "file://")


def check_mirror(mirror: str | None) -> str | None:
    """Why ``mirror`` is not a usable base URL, or None when it is (or is not set)."""
    if mirror is not None and not str(mirror).strip().lower().startswith(SCHEMES):
        return f"must be an http://, https:// or file:// URL, got {mirror!r}"
    return None


def url_of(key: str, resource: Resource, mirror: str | None) -> str:
    """Where ``resource`` is fetched from: ``mirror``, else ``$FEWMASK_MIRROR``, else the table."""
    if mirror:
        return f"{mirror.rstrip('/')}/{resource.filename}"
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env:
        problem = check_mirror(env)
        if problem:
            raise DownloadError(f"${MIRROR_ENV} {problem}")
        return f"{env.rstrip('/')}/{key}/{resource.filename}"
    return resource.url


def missing(key: str, root: Path) -> list[Resource]:
    """The resources of ``key`` not yet in place under ``root``."""
    return [r for r in DOWNLOADS[key] if not (root / r.into / r.creates).exists()]


def ensure(key: str, root: str | None, mirror: str | None, dataset: str, layout: str) -> Path:
    """Download whatever of dataset ``key`` is missing under ``root`` (created if needed) and
    return ``root``; a failure raises :class:`DownloadError` with the manual layout."""
    if not root or not str(root).strip():
        raise DownloadError(f"{dataset}: download: true needs root, the folder to download into")
    folder = Path(root).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DownloadError(f"{dataset}: root {folder} is a file; download needs a folder")
    todo = missing(key, folder)
    for resource in todo:
        url = url_of(key, resource, mirror)
        target = folder / resource.into
        try:
            if resource.is_archive:
                fetch.download_archive(
                    url, target, resource.filename, resource.creates, resource.checksums, dataset
                )
            else:
                fetch.download_file(url, target / resource.creates, resource.checksums, dataset)
        except DownloadError as exc:
            urls = "\n".join(f"  {url_of(key, r, mirror)}" for r in DOWNLOADS[key])
            note = f"\n{NOTES[key]}" if key in NOTES else ""
            raise DownloadError(
                f"{exc}\nTo place the files by hand, fetch\n{urls}\ninto {folder} (unpacking "
                f"the archives) so that it has the layout:\n{layout}{note}"
            ) from None
    if todo:
        print(f"fewmask: {dataset}: downloaded and verified into {folder}", file=sys.stderr)
    return folder
