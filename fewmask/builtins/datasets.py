"""The ``glyphs`` dataset: the built-in Omniglot-shaped set of rendered Unicode letters."""

from __future__ import annotations

import attrs
import torch

from fewmask.errors import DatasetError
from fewmask.interfaces import DatasetSource, FewShotDataset
from fewmask.options import option


@attrs.frozen
class GlyphsConfig:
    """Options of ``glyphs``."""

    set: str = option(
        "main",
        choices=("main", "heldout"),
        help="main: 1,651 classes split train/val/test by alphabet; heldout: alphabets kept out "
        "of the main set (a 'test' split only), a cross-domain target",
    )
    path: str | None = option(
        None,
        help="an .npz made by `python -m fewmask.data.glyphs_generate` (overrides `set`)",
    )
    rotations: bool = option(
        False,
        help="add 90/180/270-degree rotations of every class as new classes (x4, Omniglot-style)",
    )


class GlyphsSource(DatasetSource):
    """Characters of ~30 writing systems, 20 jittered renderings each, 28x28, split by alphabet."""

    def __init__(self, config: GlyphsConfig):
        self.config = config
        if config.set == "heldout" and config.path is None:
            self.splits = ("test",)

    def _path(self) -> str | None:
        if self.config.path is not None or self.config.set == "main":
            return self.config.path
        from fewmask.data.glyphs import GLYPHS_HELDOUT_PATH

        return str(GLYPHS_HELDOUT_PATH)

    def load(self, split: str) -> FewShotDataset:
        from fewmask.data.glyphs import load_glyph_split

        if split not in self.splits:
            raise DatasetError(
                f"glyphs ({self.config.set} set): unknown split {split!r}; "
                f"splits: {', '.join(self.splits)}"
            )
        path = self._path()
        try:
            images, codepoints = load_glyph_split(split, path)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"glyphs: cannot read {path or 'the shipped set'}: {exc}") from exc
        images = torch.from_numpy(images)  # [classes, samples, 28, 28] uint8
        names = [f"U+{int(c):04X}" for c in codepoints]
        if self.config.rotations:
            images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
            names = [f"{n}/rot{90 * k}" for k in range(4) for n in names]
        classes, samples = images.shape[:2]
        return FewShotDataset(
            images=images.reshape(classes * samples, 1, *images.shape[2:]).contiguous(),
            labels=torch.arange(classes).repeat_interleave(samples),
            class_names=tuple(names),
            name=f"glyphs{'' if self.config.set == 'main' else ':' + self.config.set}/{split}",
        )
