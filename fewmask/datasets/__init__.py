"""Loaders of the paper's benchmarks from disk (no downloads); see docs/datasets-disk.md.

Each loader checks the layout it reads and raises a :class:`fewmask.errors.DatasetError` naming
the path and showing the expected layout. Decoded splits are cached as uint8 tensors under
``cache_dir`` / ``$FEWMASK_CACHE`` / ``~/.cache/fewmask``. The standard class splits ship in
``fewmask/datasets/splits/`` (MIT / Apache-2.0; each file names its source).
"""

from __future__ import annotations

from fewmask.datasets import archives
from fewmask.datasets.cifar import CifarFSConfig, CifarFSSource, FC100Config, FC100Source
from fewmask.datasets.fashion_mnist import FashionMNISTConfig, FashionMNISTSource
from fewmask.datasets.folders import ImageFolderConfig, ImageFolderSource
from fewmask.datasets.mini_imagenet import MiniImageNetConfig, MiniImageNetSource
from fewmask.datasets.omniglot import OmniglotConfig, OmniglotSource


def register(registry) -> None:
    """Register the on-disk loaders with a (scoped) registry."""
    registry.add_dataset(
        "omniglot",
        OmniglotSource,
        config=OmniglotConfig,
        description="Omniglot from disk (torchvision layout), Vinyals or Lake split, 1x28x28",
    )
    registry.add_dataset(
        "cifar_fs",
        CifarFSSource,
        config=CifarFSConfig,
        description="CIFAR-FS from CIFAR-100's python pickles, 64/16/20 classes, 3x32x32",
    )
    registry.add_dataset(
        "fc100",
        FC100Source,
        config=FC100Config,
        description="FC100 from CIFAR-100's python pickles, 60/20/20 classes, 3x32x32",
    )
    registry.add_dataset(
        "mini_imagenet",
        MiniImageNetSource,
        config=MiniImageNetConfig,
        description="miniImageNet from csv+images, pickle caches or folders, 64/16/20, 3x84x84",
    )
    registry.add_dataset(
        "image_folder",
        ImageFolderSource,
        config=ImageFolderConfig,
        description="class-per-folder images (CUB, Cars, VGG-Flower, Aircraft, your own data)",
    )
    registry.add_dataset(
        "fashion_mnist",
        FashionMNISTSource,
        config=FashionMNISTConfig,
        description="Fashion-MNIST IDX files, 10 classes pooled: a cross-domain meta-test target",
    )
    archives.register(registry)


__all__ = [
    "CifarFSConfig",
    "CifarFSSource",
    "FC100Config",
    "FC100Source",
    "FashionMNISTConfig",
    "FashionMNISTSource",
    "ImageFolderConfig",
    "ImageFolderSource",
    "MiniImageNetConfig",
    "MiniImageNetSource",
    "OmniglotConfig",
    "OmniglotSource",
    "register",
]
