"""``CachedSource``: the base class of every dataset loader, fewmask's and plugins'.

A loader says which files make up a split and how to decode them; ``load`` does the rest, the
same way for every dataset:

1. check the split name against ``splits``; with ``download: true``, fetch what is missing
   into ``root`` (``downloads.py``);
2. list the split's ``source_files`` (cheap: listings and ``stat``) and fingerprint them
   (sorted paths, sizes, modification times);
3. read the decoded uint8 tensors from the cache when the fingerprint matches; otherwise
   ``decode`` the split once and write the cache atomically, under ``cache_dir``,
   ``$FEWMASK_CACHE`` or ``~/.cache/fewmask``, never next to the data;
4. ``finish`` what is cheap to redo (rotations, channel replication: options listed in
   ``after_cache``, so they share one cache file) and build the ``FewShotDataset``.

Config problems that need no data (option combinations) belong in the config class's
``check()``: ``fewmask validate`` reports them before anything is read, and the constructor
raises them for sources built in Python.

Example, a loader of ``ROOT/<split>.npz`` files holding ``images`` uint8 [N, H, W] and
``labels`` (see docs/datasets-disk.md, "Writing a loader")::

    @attrs.frozen
    class NpzConfig(CachedSourceConfig):
        invert: bool = option(False, help="white ink on black")

    class NpzSource(CachedSource):
        name = "my_npz"
        layout = "ROOT/{train,val,test}.npz  (images uint8 [N, H, W], labels int [N])"

        def source_files(self, split):
            file = self.root_folder() / f"{split}.npz"
            if not file.is_file():
                raise self.layout_error("missing file", file)
            return [file]

        def decode(self, split):
            with np.load(self.source_files(split)[0]) as npz:
                order = np.argsort(npz["labels"], kind="stable")
                images, labels = npz["images"][order], npz["labels"][order]
            classes, labels = np.unique(labels, return_inverse=True)
            if self.config.invert:
                images = 255 - images
            return (torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype("int64")),
                    [str(c) for c in classes])
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from fewmask.datasets import cache, downloads, layout
from fewmask.datasets.images import Arrays, allocating_with
from fewmask.errors import ConfigError, DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import check_values, option

CACHE_HELP = "where decoded tensors are cached (default $FEWMASK_CACHE or ~/.cache/fewmask)"


@attrs.frozen
class CachedSourceConfig:
    """Options every on-disk loader has: where the data is, where its decoded tensors go.

    Loader configs extend it with their own fields (all with defaults).
    """

    root: str = option(
        help="folder holding the dataset, in one of the layouts the loader accepts "
        "(docs/datasets-disk.md)"
    )
    cache_dir: str | None = option(None, help=CACHE_HELP)

    def check(self) -> dict[str, str]:
        if self.root is not None and not str(self.root).strip():
            return {"root": "is empty: name the folder that holds the dataset"}
        return {}


@attrs.frozen
class DownloadableConfig(CachedSourceConfig):
    """:class:`CachedSourceConfig` plus ``download`` and ``mirror``, for the loaders whose data
    has a public home (``fewmask.datasets.downloads.DOWNLOADS``)."""

    download: bool = option(
        False,
        help="fetch whatever of the dataset is missing into root (created if needed), verify its "
        "checksums, unpack it; then load as usual (docs/datasets.md)",
    )
    mirror: str | None = option(
        None,
        help="base URL holding the dataset's files to download from instead of the official "
        "ones (<mirror>/<file name>); default $FEWMASK_MIRROR/<dataset>/, else the official URLs",
    )

    def check(self) -> dict[str, str]:
        problems = CachedSourceConfig.check(self)
        problem = downloads.check_mirror(self.mirror)
        if problem:
            problems["mirror"] = problem
        return problems


class CachedSource(DatasetSource):
    """Loads a split by decoding its source files once into a cached uint8 tensor file.

    Subclasses set ``name`` (messages, cache folder, dataset names such as ``omniglot/train``)
    and ``layout`` (shown by layout errors), and implement :meth:`source_files` and
    :meth:`decode`; :meth:`finish` and :meth:`cache_key` are optional. A source that decodes as
    fast as it could read a cache (package data) sets ``cached = False``.
    """

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    after_cache: ClassVar[tuple[str, ...]] = ()
    """Options that :meth:`finish` applies: left out of the cache key."""
    cached: ClassVar[bool] = True
    downloads: ClassVar[str] = ""
    """Key of ``fewmask.datasets.downloads.DOWNLOADS`` that ``download: true`` fetches."""

    def __init__(self, config: Any) -> None:
        problems = check_values(config)
        if problems:
            raise ConfigError(problems)
        self.config = config

    # ------------------------------------------------------------------ what a loader implements

    @abstractmethod
    def source_files(self, split: str) -> list[Path]:
        """The files ``split`` is decoded from (fingerprinted); layout problems raise here."""

    @abstractmethod
    def decode(self, split: str) -> Arrays:
        """Decode ``split``: uint8 images ``[N, C, H, W]`` sorted by class, int64 labels
        ``[N]`` (class positions), one name per class."""

    def finish(self, arrays: Arrays) -> Arrays:
        """Transform the (cached) arrays before use; applies the options of ``after_cache``."""
        return arrays

    # ------------------------------------------------------------------ shared machinery

    def load(self, split: str) -> FewShotDataset:
        """The split, from the cache when its source is unchanged; see the module docstring."""
        self.check_split(split)
        self.download()
        try:
            arrays = self._from_cache(split) if self.cached else self._decoded(split)
        except OSError as exc:  # e.g. a permission problem the loader did not anticipate
            where = exc.filename or getattr(self.config, "root", None) or "its files"
            raise DatasetError(f"{self.name}: cannot read {where}: {exc.strerror or exc}") from None
        images, labels, names = self.finish(arrays)
        return FewShotDataset(
            images=images.contiguous(),
            labels=labels,
            class_names=tuple(names),
            name=f"{self.name}/{split}",
        )

    def download(self) -> None:
        """Fetch the data into ``root`` when the config says ``download: true`` (a no-op when
        everything is in place already)."""
        if self.downloads and getattr(self.config, "download", False):
            downloads.ensure(
                self.downloads, self.config.root, self.config.mirror, self.name, self.layout
            )

    def check_split(self, split: str) -> None:
        """Raise for a split name this source does not serve, listing the valid ones."""
        if split not in self.splits:
            raise DatasetError(
                f"{self.name}: unknown split {split!r}; splits: {', '.join(self.splits)}"
            )

    def cache_key(self, split: str) -> dict[str, Any]:
        """What tells cache files apart: the split and every option (``root`` made absolute)
        except ``cache_dir``, ``download``, ``mirror`` and ``after_cache``."""
        options = attrs.asdict(self.config)
        for field in ("cache_dir", "download", "mirror", *self.after_cache):
            options.pop(field, None)
        if options.get("root"):
            options["root"] = str(Path(options["root"]).expanduser().resolve())
        return {"split": split, "options": options}

    def root_folder(self) -> Path:
        """The ``root`` option as an existing folder, or an error showing ``layout``."""
        return layout.resolve_root(self.config.root, self.name, self.layout)

    def layout_error(self, problem: str, path: Path | str) -> DatasetError:
        """An error naming ``path`` and showing ``layout``."""
        return layout.layout_error(self.name, problem, path, self.layout)

    def _from_cache(self, split: str) -> Arrays:
        fingerprint = cache.fingerprint(self.source_files(split), self.name)
        path = cache.cache_path(self.config.cache_dir, self.name, self.cache_key(split))
        arrays = cache.read_cache(path, fingerprint)
        if arrays is None:
            target = cache.ImagesFile(path)  # decoders that use new_images write into it
            try:
                with allocating_with(target.allocate):
                    arrays = self._decoded(split)
            except BaseException:
                target.discard()
                raise
            arrays = cache.write_cache(path, fingerprint, arrays, target)
        return arrays

    def _decoded(self, split: str) -> Arrays:
        arrays = self.decode(split)
        images, labels, names = arrays
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
            raise TypeError(
                f"{type(self).__name__}.decode must return (uint8 images [N, C, H, W], "
                f"int64 labels [N], class names), got {type(images).__name__} images"
            )
        FewShotDataset(images, labels, tuple(names), f"{self.name}/{split}")  # checks, or raises
        return arrays
