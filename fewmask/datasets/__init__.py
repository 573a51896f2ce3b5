"""fewmask's datasets: the built-in glyph set and the loaders of the paper's benchmarks from disk.

Every loader subclasses :class:`~fewmask.datasets.base.CachedSource` (public as
``fewmask.CachedSource``): it checks the layout it reads, raises a
:class:`fewmask.errors.DatasetError` naming the path and showing the expected layout, and caches
decoded splits as memory-mapped uint8 arrays under ``cache_dir`` / ``$FEWMASK_CACHE`` /
``~/.cache/fewmask``. The loaders whose data has a public home fetch it into ``root`` on
``download: true`` (``downloads.py``, ``fetch.py``; docs/datasets.md). The standard class
splits ship in ``splits/`` (MIT / Apache-2.0; each file names its source), the glyph sets in
``data/``.
"""

from __future__ import annotations

from fewmask.datasets.base import CachedSource, CachedSourceConfig
from fewmask.datasets.cifar import CifarFSConfig, CifarFSSource, FC100Config, FC100Source
from fewmask.datasets.fashion_mnist import FashionMNISTConfig, FashionMNISTSource
from fewmask.datasets.fine_grained import (
    AircraftConfig,
    AircraftSource,
    CarsConfig,
    CarsSource,
    VggFlowerConfig,
    VggFlowerSource,
)
from fewmask.datasets.folders import ImageFolderConfig, ImageFolderSource
from fewmask.datasets.glyphs import GlyphsConfig, GlyphsSource
from fewmask.datasets.mini_imagenet import MiniImageNetConfig, MiniImageNetSource
from fewmask.datasets.omniglot import OmniglotConfig, OmniglotSource

LOADERS = (
    (
        "glyphs",
        GlyphsSource,
        GlyphsConfig,
        "built-in Omniglot-shaped glyph set (1,600+ classes, 28x28)",
    ),
    (
        "omniglot",
        OmniglotSource,
        OmniglotConfig,
        "Omniglot from disk (folders or the original zips), Vinyals or Lake split, 1x28x28",
    ),
    (
        "cifar_fs",
        CifarFSSource,
        CifarFSConfig,
        "CIFAR-FS from CIFAR-100's python pickles, 64/16/20 classes, 3x32x32",
    ),
    (
        "fc100",
        FC100Source,
        FC100Config,
        "FC100 from CIFAR-100's python pickles, 60/20/20 classes, 3x32x32",
    ),
    (
        "mini_imagenet",
        MiniImageNetSource,
        MiniImageNetConfig,
        "miniImageNet from csv+images, either pickle layout or folders, 64/16/20, 3x84x84",
    ),
    (
        "image_folder",
        ImageFolderSource,
        ImageFolderConfig,
        "class-per-folder images (CUB, your own data)",
    ),
    (
        "fashion_mnist",
        FashionMNISTSource,
        FashionMNISTConfig,
        "Fashion-MNIST IDX files, 10 classes pooled: a cross-domain meta-test target",
    ),
    (
        "aircraft",
        AircraftSource,
        AircraftConfig,
        "FGVC-Aircraft 2013b archive or class folders, 100 variants, 70/15/15, 3x32x32",
    ),
    (
        "vgg_flower",
        VggFlowerSource,
        VggFlowerConfig,
        "102 Flowers jpg/ + imagelabels.mat (scipy) or class folders, 71/15/16, 3x32x32",
    ),
    (
        "cars",
        CarsSource,
        CarsConfig,
        "Stanford Cars cars_train/ + devkit .mat (scipy) or class folders, 98/49/49, 3x84x84",
    ),
)
"""``(name, source class, config class, description)`` of every built-in dataset."""


def register(registry) -> None:
    """Register every built-in dataset with a (scoped) registry."""
    for name, source, config, description in LOADERS:
        registry.add_dataset(name, source, config=config, description=description)


__all__ = [
    "AircraftConfig",
    "AircraftSource",
    "CachedSource",
    "CachedSourceConfig",
    "CarsConfig",
    "CarsSource",
    "CifarFSConfig",
    "CifarFSSource",
    "FC100Config",
    "FC100Source",
    "FashionMNISTConfig",
    "FashionMNISTSource",
    "GlyphsConfig",
    "GlyphsSource",
    "ImageFolderConfig",
    "ImageFolderSource",
    "LOADERS",
    "MiniImageNetConfig",
    "MiniImageNetSource",
    "OmniglotConfig",
    "OmniglotSource",
    "VggFlowerConfig",
    "VggFlowerSource",
    "register",
]
