"""``glyphs``: the built-in Omniglot-shaped set of rendered Unicode letters (package data).

``data/glyphs.npz`` (beside this module) holds letters grouped by script ("alphabets"):
``images`` uint8 [C, 20, 28, 28], white ink on black, split by alphabet into train / val / test.
``data/glyphs_heldout.npz`` holds held-out alphabets (Egyptian hieroglyphs, Cuneiform, Yi,
Tangut, ...) with no code point of the main set, all in the 'test' split: a cross-domain
meta-test target. ``tools/glyphs_generate.py`` (in the repository, not the package) made both;
see ``docs/glyphs.md``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from fewmask.datasets.base import CachedSource
from fewmask.datasets.images import Arrays, rotated_classes
from fewmask.errors import DatasetError
from fewmask.options import option

DATA = Path(__file__).resolve().parent / "data"
GLYPHS_PATH: Path = DATA / "glyphs.npz"
GLYPHS_HELDOUT_PATH: Path = DATA / "glyphs_heldout.npz"
"""Held-out alphabets (cross-domain target); only a 'test' split."""
SPLITS: tuple[str, ...] = ("train", "val", "test")
_KEYS = ("images", "class_alphabet", "class_codepoint", "alphabets", "alphabet_split", "metadata")


# ----------------------------------------------------------------------------- the .npz files


def load_glyph_arrays(path: str | Path | None = None) -> dict[str, Any]:
    """Every array of a glyph ``.npz`` file (default: the shipped set) as a dict.

    ``metadata`` is parsed from its JSON string into a dict. Raises ``FileNotFoundError`` if
    the file is missing and ``ValueError`` if it is not a readable glyph set; both name the path.
    """
    p = Path(path) if path is not None else GLYPHS_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"glyph set not found at {p}; generate one with "
            "`python tools/glyphs_generate.py --out PATH.npz` (see docs/glyphs.md)"
        )
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = [k for k in _KEYS if k not in npz.files]
            if missing:
                raise ValueError(f"missing keys {missing}")
            out: dict[str, Any] = {k: npz[k] for k in npz.files}
        out["metadata"] = json.loads(str(out["metadata"]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"corrupt or invalid glyph set at {p}: {exc}") from exc
    return out


def load_glyph_split(split: str, path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, codepoints)`` of the classes of one split (split by alphabet).

    ``images`` is uint8 [N, 20, 28, 28]; ``codepoints`` is int32 [N]. Raises ``ValueError``
    naming the file if it has no alphabet in ``split``, e.g.
    ``load_glyph_split("train", GLYPHS_HELDOUT_PATH)``: the held-out set only has 'test'.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    p = Path(path) if path is not None else GLYPHS_PATH
    arrays = load_glyph_arrays(p)
    alphabet_split = np.asarray(arrays["alphabet_split"]).astype(str)
    present = [s for s in SPLITS if s in set(alphabet_split.tolist())]
    if split not in present:
        only = (
            f"a {present[0]!r} split"
            if len(present) == 1
            else "splits " + ", ".join(repr(s) for s in present)
        )
        raise ValueError(f"glyph set {p} has no {split!r} split: it only has {only}")
    keep = alphabet_split[arrays["class_alphabet"].astype(np.int64)] == split
    return arrays["images"][keep], arrays["class_codepoint"][keep]


def nearest_neighbour_accuracy(
    images_by_class: np.ndarray,
    ways: int = 5,
    shots: int = 1,
    queries: int = 5,
    episodes: int = 2000,
    seed: int = 0,
) -> float:
    """Raw-pixel nearest-neighbour accuracy on random few-shot episodes.

    ``images_by_class`` is [C, M, H, W] (any numeric dtype). Each episode draws ``ways``
    classes and, per class, ``shots`` supports and ``queries`` queries (distinct samples). A
    query is labelled with the class of its most cosine-similar support image (flattened
    pixels). Returns the mean accuracy.
    """
    x = np.asarray(images_by_class)
    if x.ndim != 4:
        raise ValueError(f"expected [classes, samples, H, W], got shape {x.shape}")
    n_cls, n_smp = x.shape[:2]
    if n_cls < ways or n_smp < shots + queries:
        raise ValueError(
            f"need >= {ways} classes and >= {shots + queries} samples, got {x.shape[:2]}"
        )
    flat = x.reshape(n_cls, n_smp, -1).astype(np.float32)
    flat /= np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-8)
    rng = np.random.default_rng(seed)
    correct = 0
    total = 0
    chunk = 256
    for start in range(0, episodes, chunk):
        e = min(chunk, episodes - start)
        cls = np.argsort(rng.random((e, n_cls)), axis=1)[:, :ways]  # [e, ways]
        smp = np.argsort(rng.random((e, ways, n_smp)), axis=2)[:, :, : shots + queries]
        feats = flat[cls[:, :, None], smp]  # [e, ways, shots+queries, D]
        sup = feats[:, :, :shots].reshape(e, ways * shots, -1)
        qry = feats[:, :, shots:].reshape(e, ways * queries, -1)
        sims = np.einsum("eqd,esd->eqs", qry, sup)
        pred = np.argmax(sims, axis=2) // shots
        truth = np.repeat(np.arange(ways), queries)[None, :]
        correct += int((pred == truth).sum())
        total += pred.size
    return correct / total


# ----------------------------------------------------------------------------- the dataset


@attrs.frozen
class GlyphsConfig:
    """Options of ``glyphs`` (package data: no root, no cache)."""

    set: str = option(
        "main",
        choices=("main", "heldout"),
        help="main: 1,651 classes split train/val/test by alphabet; heldout: alphabets kept out "
        "of the main set (a 'test' split only), a cross-domain target",
    )
    path: str | None = option(
        None,
        help="an .npz made by `python tools/glyphs_generate.py` (overrides `set`)",
    )
    rotations: bool = option(
        False,
        help="add 90/180/270-degree rotations of every class as new classes (x4, Omniglot-style)",
    )


class GlyphsSource(CachedSource):
    """Characters of ~30 writing systems, 20 jittered renderings each, 28x28, split by alphabet.

    Reading the compressed ``.npz`` is as fast as reading a cache, so nothing is cached.
    """

    name = "glyphs"
    cached = False

    def __init__(self, config: GlyphsConfig):
        super().__init__(config)
        if config.set == "heldout" and config.path is None:
            self.splits = ("test",)
            self.name = "glyphs:heldout"  # type: ignore[misc]

    def _path(self) -> Path:
        if self.config.path is not None:
            return Path(self.config.path)
        return GLYPHS_PATH if self.config.set == "main" else GLYPHS_HELDOUT_PATH

    def source_files(self, split: str) -> list[Path]:
        return [self._path()]

    def decode(self, split: str) -> Arrays:
        path = self._path()
        try:
            images, codepoints = load_glyph_split(split, path)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"glyphs: cannot read {path}: {exc}") from exc
        classes, samples = images.shape[:2]
        flat = torch.from_numpy(images).reshape(classes * samples, 1, *images.shape[2:])
        labels = torch.arange(classes).repeat_interleave(samples)
        return flat, labels, [f"U+{int(c):04X}" for c in codepoints]

    def finish(self, arrays: Arrays) -> Arrays:
        if self.config.rotations:
            return rotated_classes(arrays, "{name}/rot{angle}")
        return arrays
