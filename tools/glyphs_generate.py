"""Generate the Omniglot-shaped glyph benchmark from installed fonts.

Alphabet = Unicode script, class = one letter, sample = the letter rendered by
Pillow in one of the font files covering it, then jittered (weight-aware 3x3
max/min filter, random affine, small mesh warp, crop to ink, resize, random
sub-pixel placement on a 28x28 canvas; white ink on black).

Usage::

    python tools/glyphs_generate.py --out PATH.npz [--seed 0] [--samples 20]
        [--shift PX] [--font-dir DIR ...] [--sample-png PATH]

Held-out alphabets (cross-domain meta-test target: the scripts in
``HELDOUT_SCRIPTS``, every alphabet in the 'test' split, no code point of the
``--exclude`` file, and that file's calibrated placement shift)::

    python tools/glyphs_generate.py --heldout --exclude fewmask/datasets/data/glyphs.npz \
        --out fewmask/datasets/data/glyphs_heldout.npz

Needs Pillow and fontTools (imported lazily; the ``glyphs`` extra) plus fonts, e.g.
``apt-get install fonts-noto-core fonts-noto-extra``, and fewmask installed (it reads and checks
sets with :mod:`fewmask.datasets.glyphs`). This script lives outside the package: the shipped
sets are package data, the generator is not.

Script heuristic: Python has no Unicode script property, so the script of a
letter is read from its character name: the words before the first
"role" word (LETTER, CAPITAL, SMALL, SYLLABLE, SYLLABICS, CHARACTER, VOWEL, ...),
or the first word when there is none. "GREEK CAPITAL LETTER ALPHA" -> GREEK,
"OLD ITALIC LETTER A" -> OLD ITALIC, "CANADIAN SYLLABICS E" -> CANADIAN.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fewmask.datasets.glyphs import load_glyph_arrays, nearest_neighbour_accuracy

CANVAS = 28
LEVELS = 32  # grey levels kept in the output (0..255 in equal steps)
LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo"})
# Words that end the script prefix of a character name.
ROLE_WORDS = frozenset(
    (
        "LETTER CAPITAL SMALL SYLLABLE SYLLABICS CHARACTER IDEOGRAPH IDEOGRAM LIGATURE VOWEL "
        "CONSONANT INDEPENDENT SIGN DIGIT LOGOGRAM HIEROGLYPH ABBREVIATION FINAL INITIAL MEDIAL "
        "ISOLATED SUBJOINED ARCHAIC VOCALIC TONE WORD NUMBER SYMBOL MARK CLUSTER-INITIAL"
    ).split()
)
# Not scripts (Common/Inherited/Han/Hangul) or held out as cross-domain targets
# (pictographic, single-font: Egyptian hieroglyphs, Cuneiform, Yi, Tangut, ...).
EXCLUDED_SCRIPTS = frozenset(
    (
        "CJK HANGUL MODIFIER IDEOGRAPHIC KANGXI EGYPTIAN CUNEIFORM YI TANGUT KHITAN NUSHU "
        "MATHEMATICAL FULLWIDTH HALFWIDTH FEMININE MASCULINE SQUARED CIRCLED PARENTHESIZED "
        "BYZANTINE MUSICAL SIGNWRITING"
    ).split()
)
# Held-out alphabets (``--heldout``): pictographic / logographic / syllabic scripts that the
# main set excludes or leaves out, matched as the script prefix of the character name.
HELDOUT_SCRIPTS: tuple[str, ...] = (
    "EGYPTIAN",  # hieroglyphs
    "CUNEIFORM",
    "YI",  # syllables
    "TANGUT",
    "NUSHU",
    "LINEAR A",
    "LINEAR B",
    "ANATOLIAN",  # hieroglyphs
    "BAMUM",
    "VAI",
    "OLD PERSIAN",
)
# Letters without a name in Python's unicodedata (algorithmic names): (first, last, script).
UNNAMED_LETTER_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x17000, 0x187FF, "TANGUT"),  # TANGUT IDEOGRAPH-17000 ...
    (0x18D00, 0x18D7F, "TANGUT"),  # Tangut Supplement
)
SKIP_FONT_WORDS = ("Emoji", "Color")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
APT_HINT = "apt-get install fonts-noto-core fonts-noto-extra"


@dataclass(frozen=True)
class JitterSettings:
    """Ranges of the per-sample jitter (all sampled uniformly)."""

    render_size: tuple[int, int] = (44, 72)  # font size in px before the 3x3 filter
    rotation_deg: float = 12.0
    scale: tuple[float, float] = (0.85, 1.15)  # independent x / y scale
    shear: float = 0.25
    warp: float = 0.05  # mesh-node displacement, fraction of the font size
    warp_cells: int = 6
    long_side: tuple[float, float] = (18.0, 24.0)  # px on the 28x28 canvas


# --------------------------------------------------------------------------- letters


def script_of(name: str) -> str:
    """Script (alphabet) name of a Unicode character name, by heuristic."""
    words = name.split()
    for i, w in enumerate(words):
        if w in ROLE_WORDS:
            return " ".join(words[:i]) if i else words[0]
    return words[0]


def _raw_letter_script(cp: int) -> str | None:
    ch = chr(cp)
    if unicodedata.category(ch) not in LETTER_CATEGORIES:
        return None
    if unicodedata.normalize("NFKD", ch) != ch:
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return None
    script = script_of(name)
    if script.split()[0] in EXCLUDED_SCRIPTS:
        return None
    return script


@cache
def _script_sizes() -> dict[str, int]:
    """Number of eligible letters per raw name prefix, over all of Unicode."""
    sizes: dict[str, int] = defaultdict(int)
    for cp in range(0x110000):
        s = _raw_letter_script(cp)
        if s is not None:
            sizes[s] += 1
    return dict(sizes)


@cache
def letter_script(cp: int) -> str | None:
    """Script of ``cp`` if it is an eligible letter, else None.

    A multi-word prefix folds into its shortest leading part that is itself a
    prefix of >= 14 letters ("GEORGIAN MTAVRULI" -> "GEORGIAN", "LATIN EPIGRAPHIC"
    -> "LATIN", "PAU CIN HAU RISING" -> "PAU CIN HAU").
    """
    script = _raw_letter_script(cp)
    if script is None:
        return None
    words = script.split()
    sizes = _script_sizes()
    for k in range(1, len(words)):
        if sizes.get(" ".join(words[:k]), 0) >= 14:
            return " ".join(words[:k])
    return script


@cache
def heldout_script(cp: int, scripts: tuple[str, ...] = HELDOUT_SCRIPTS) -> str | None:
    """Held-out alphabet of ``cp`` (one of ``scripts``) if it is an eligible letter, else None.

    Same letter rules as :func:`letter_script` (category Lu/Ll/Lt/Lo, ``NFKD(ch) == ch``);
    the script is the entry of ``scripts`` that the name prefix equals or starts with
    ("LINEAR B" for "LINEAR B SYLLABLE B008 A"). Tangut ideographs, which have no name
    in ``unicodedata``, are recognised by code point range.
    """
    ch = chr(cp)
    if unicodedata.category(ch) not in LETTER_CATEGORIES:
        return None
    if unicodedata.normalize("NFKD", ch) != ch:
        return None
    name = unicodedata.name(ch, "")
    if name:
        prefix = script_of(name)
        for s in scripts:
            if prefix == s or prefix.startswith(s + " "):
                return s
        return None
    for first, last, s in UNNAMED_LETTER_RANGES:
        if first <= cp <= last and s in scripts:
            return s
    return None


# --------------------------------------------------------------------------- fonts


def default_font_dirs() -> list[Path]:
    """Usual font folders plus matplotlib's bundled fonts when installed."""
    dirs = [
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        Path.home() / ".fonts",
        Path.home() / ".local/share/fonts",
    ]
    try:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                dirs.append(Path(loc) / "mpl-data" / "fonts" / "ttf")
    except (ImportError, ValueError):
        pass
    return dirs


def discover_fonts(font_dirs: Iterable[str | Path] | None = None) -> list[Path]:
    """Sorted, de-duplicated font files (.ttf/.otf/.ttc) under ``font_dirs``."""
    dirs = [Path(d) for d in font_dirs] if font_dirs else default_font_dirs()
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() in FONT_SUFFIXES and p.is_file():
                if any(w in p.name for w in SKIP_FONT_WORDS):
                    continue
                found.setdefault(p.name, p)  # same basename in two dirs: keep first
    return [found[k] for k in sorted(found)]


def _scan_font(path: str, heldout: bool = False) -> tuple[str, int, int, list[int]] | None:
    """(path, OS/2 weight, OS/2 width, eligible letters covered); None if unreadable.

    ``heldout=True`` also keeps the letters of :data:`HELDOUT_SCRIPTS`.
    """
    from fontTools.ttLib import TTFont  # optional dependency, imported lazily

    try:
        font = TTFont(path, lazy=True, fontNumber=0)
        cmap = font.getBestCmap() or {}
        weight, width = 400, 5
        if "OS/2" in font:
            weight = int(font["OS/2"].usWeightClass)
            width = int(font["OS/2"].usWidthClass)
        font.close()
    except Exception:
        return None
    cps = sorted(
        cp
        for cp in cmap
        if cp < 0x110000
        and (letter_script(cp) is not None or (heldout and heldout_script(cp) is not None))
    )
    return path, weight, width, cps


def _pool_map(func: Any, items: Sequence[Any], processes: int) -> list[Any]:
    if processes <= 1 or len(items) < 2:
        return [func(x) for x in items]
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(processes) as pool:
        return pool.map(func, items, chunksize=max(1, len(items) // (processes * 8)))


@lru_cache(maxsize=192)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=0, layout_engine=ImageFont.Layout.BASIC)


# --------------------------------------------------------------------------- rendering


def render_letter(path: str, cp: int, size: int) -> np.ndarray | None:
    """Render ``chr(cp)`` at ``size`` px, ink centred on a 3*size canvas; None if blank."""
    font = _font(path, size)
    side = 3 * size
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    try:
        left, top, right, bottom = draw.textbbox((0, 0), chr(cp), font=font)
    except Exception:
        return None
    if right <= left or bottom <= top:
        return None
    ox = side / 2 - (left + right) / 2
    oy = side / 2 - (top + bottom) / 2
    draw.text((ox, oy), chr(cp), font=font, fill=255)
    arr = np.asarray(img)
    if arr.max() < 64:
        return None
    return arr


def ink_box(arr: np.ndarray, thresh: int = 32) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of pixels above ``thresh``, exclusive ends; None if blank."""
    rows = np.flatnonzero((arr > thresh).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((arr > thresh).any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def fit_to(arr: np.ndarray, long_side: float) -> np.ndarray:
    """Crop ``arr`` to its ink box and resize so the long side is ``long_side`` px."""
    box = ink_box(arr)
    if box is None:
        raise ValueError("blank image")
    top, bottom, left, right = box
    crop = Image.fromarray(np.ascontiguousarray(arr[top:bottom, left:right]))
    h, w = bottom - top, right - left
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(crop.resize(size, Image.Resampling.LANCZOS))


def _reference_task(args: tuple[str, list[int]]) -> list[tuple[int, np.ndarray | None, float]]:
    """Reference renders of the letters of one font: (cp, 24x24 vector or None, box/em)."""
    path, cps = args
    size = 64
    out = []
    for cp in cps:
        arr = render_letter(path, cp, size)
        box = ink_box(arr) if arr is not None else None
        if box is None:
            out.append((cp, None, 0.0))
            continue
        extent = max(box[1] - box[0], box[3] - box[2]) / size
        small = fit_to(arr, 20.0)
        canvas = np.zeros((24, 24), np.uint8)
        h, w = small.shape
        canvas[(24 - h) // 2 : (24 - h) // 2 + h, (24 - w) // 2 : (24 - w) // 2 + w] = small
        out.append((cp, canvas, extent))
    return out


def jitter_sample(
    path: str, weight: int, cp: int, rng: np.random.Generator, js: JitterSettings
) -> np.ndarray | None:
    """One jittered rendering, cropped and resized (not yet placed); None if blank."""
    size = int(rng.integers(js.render_size[0], js.render_size[1] + 1))
    arr = render_letter(path, cp, size)
    if arr is None:
        return None
    img = Image.fromarray(arr)
    # weight-aware stroke change: thicken light fonts, thin heavy ones
    u = rng.random()
    if weight <= 350:
        op = "max" if u < 0.6 else None
    elif weight >= 650:
        op = "min" if u < 0.5 else None
    else:
        op = "max" if u < 0.2 else ("min" if u > 0.8 else None)
    if op == "max":
        img = img.filter(ImageFilter.MaxFilter(3))
    elif op == "min":
        thin = img.filter(ImageFilter.MinFilter(3))
        ink = float((arr > 128).sum())
        if ink > 0 and float((np.asarray(thin) > 128).sum()) > 0.4 * ink:
            img = thin
    # random affine about the canvas centre
    side = img.size[0]
    th = math.radians(rng.uniform(-js.rotation_deg, js.rotation_deg))
    sx, sy = rng.uniform(js.scale[0], js.scale[1], size=2)
    sh = rng.uniform(-js.shear, js.shear)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    fwd = rot @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(fwd)
    c = np.array([side / 2, side / 2])
    off = c - inv @ c
    img = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.Resampling.BICUBIC,
    )
    # small mesh warp: jitter the interior nodes of a regular grid
    n = js.warp_cells
    step = side / n
    nodes = np.stack(
        np.meshgrid(np.arange(n + 1) * step, np.arange(n + 1) * step, indexing="xy"), -1
    )
    disp = rng.uniform(-1, 1, size=nodes.shape) * js.warp * size
    disp[0, :] = disp[-1, :] = disp[:, 0] = disp[:, -1] = 0
    src = nodes + disp
    mesh = []
    for i in range(n):
        for j in range(n):
            box = (round(j * step), round(i * step), round((j + 1) * step), round((i + 1) * step))
            quad = (*src[i, j], *src[i + 1, j], *src[i + 1, j + 1], *src[i, j + 1])
            mesh.append((box, tuple(float(v) for v in quad)))
    img = img.transform(img.size, Image.Transform.MESH, mesh, resample=Image.Resampling.BILINEAR)
    out = np.asarray(img)
    if ink_box(out) is None:
        return None
    return fit_to(out, rng.uniform(js.long_side[0], js.long_side[1]))


def _class_task(
    args: tuple[int, list[tuple[str, int]], int, int, JitterSettings],
) -> list[np.ndarray]:
    """``samples`` jittered crops of one letter, cycling through its fonts."""
    cp, fonts, samples, seed, js = args
    rng = np.random.default_rng([seed, cp, 1])
    order = [fonts[i] for i in rng.permutation(len(fonts))]
    crops: list[np.ndarray] = []
    k = 0
    failures = 0
    while len(crops) < samples:
        path, weight = order[k % len(order)]
        k += 1
        crop = jitter_sample(path, weight, cp, rng, js)
        if crop is None:
            failures += 1
            if failures > 4 * samples + len(order):
                break
            continue
        crops.append(crop)
    return crops


def place(crops: Sequence[np.ndarray], shift: float, rng: np.random.Generator) -> np.ndarray:
    """Paste crops on 28x28 black canvases, centred plus a uniform +-``shift`` px offset.

    The offset is sub-pixel (bilinear) and clipped so the glyph stays on the canvas.
    Each image is then stretched to full contrast and quantised to ``LEVELS`` grey
    levels (keeps the shipped file small).
    """
    out = np.zeros((len(crops), CANVAS, CANVAS), np.uint8)
    for i, crop in enumerate(crops):
        h, w = crop.shape
        dx, dy = rng.uniform(-shift, shift, size=2) if shift > 0 else (0.0, 0.0)
        x0 = min(max((CANVAS - w) / 2 + dx, 0.0), CANVAS - w)
        y0 = min(max((CANVAS - h) / 2 + dy, 0.0), CANVAS - h)
        img = Image.fromarray(crop).transform(
            (CANVAS, CANVAS),
            Image.Transform.AFFINE,
            (1, 0, -x0, 0, 1, -y0),
            resample=Image.Resampling.BILINEAR,
        )
        arr = np.asarray(img).astype(np.float32)
        arr *= (LEVELS - 1) / max(float(arr.max()), 1.0)  # stretch to full contrast
        out[i] = np.round(np.round(arr) * (255.0 / (LEVELS - 1))).astype(np.uint8)
    return out


def place_all(crops: list[list[np.ndarray]], shift: float, seed: int) -> np.ndarray:
    """Place every class's crops; [C, M, 28, 28] uint8, deterministic from ``seed``."""
    return np.stack(
        [place(c, shift, np.random.default_rng([seed, i, 2])) for i, c in enumerate(crops)]
    )


# --------------------------------------------------------------------------- selection


def _dedup(
    order: list[int], vecs: np.ndarray, scripts: list[str], cross: float, within: float
) -> list[int]:
    """Greedy look-alike removal in ``order``; returns kept indices."""
    v = vecs.astype(np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
    script_id = np.unique(np.asarray(scripts), return_inverse=True)[1]
    kept: list[int] = []
    kept_v = np.zeros_like(v)
    kept_s = np.zeros(len(v), np.int64)
    for i in order:
        n = len(kept)
        if n:
            sims = kept_v[:n] @ v[i]
            same = kept_s[:n] == script_id[i]
            if (sims[~same] > cross).any() or (sims[same] > within).any():
                continue
        kept_v[n] = v[i]
        kept_s[n] = script_id[i]
        kept.append(i)
    return kept


def assign_splits(
    sizes: dict[str, int], seed: int, targets: tuple[float, float, float] = (1000, 200, 400)
) -> dict[str, str]:
    """Split alphabets into train/val/test, filling each towards its target share."""
    names = sorted(sizes)
    rng = np.random.default_rng([seed, 3])
    names = [names[i] for i in rng.permutation(len(names))]
    total = float(sum(targets))
    fill = {"train": 0, "val": 0, "test": 0}
    share = dict(zip(("train", "val", "test"), (t / total for t in targets), strict=True))
    out: dict[str, str] = {}
    for name in names:
        # the split furthest below its share of the classes assigned so far (+ this one)
        after = sum(fill.values()) + sizes[name]
        split = min(fill, key=lambda s: (fill[s] + sizes[name]) / after - share[s])
        out[name] = split
        fill[split] += sizes[name]
    return out


def licence_of(font_file: str) -> str:
    """Licence of a font file, from its family name."""
    if font_file.startswith("Noto"):
        return "SIL Open Font License 1.1"
    if font_file.startswith("DejaVuMathTeXGyre"):
        return "GUST Font License (TeX Gyre)"
    if font_file.startswith("DejaVu"):
        return "Bitstream Vera licence (DejaVu changes: public domain)"
    if font_file.upper().startswith("STIX"):
        return "SIL Open Font License 1.1"
    return "unknown: see the font file"


def generate(
    font_paths: Sequence[str | Path] | None = None,
    font_dirs: Sequence[str | Path] | None = None,
    seed: int = 0,
    samples: int = 20,
    shift: float | None = None,
    jitter: JitterSettings | None = None,
    min_classes: int = 1600,
    min_alphabets: int = 30,
    min_per_alphabet: int = 14,
    max_per_alphabet: int = 55,
    min_em: float = 0.4,
    cross_script_cos: float = 0.92,
    within_script_cos: float = 0.97,
    target_accuracy: float = 0.425,
    processes: int = 2,
    verbose: bool = False,
    heldout: bool = False,
    exclude_codepoints: Iterable[int] | None = None,
    heldout_scripts: Sequence[str] = HELDOUT_SCRIPTS,
) -> dict[str, Any]:
    """Build the glyph set; returns the arrays written to the ``.npz`` (metadata as dict).

    ``shift=None`` calibrates the placement shift so that raw-pixel nearest-neighbour
    5-way 1-shot accuracy on the test split is closest to ``target_accuracy``.

    ``heldout=True`` builds the held-out set instead: letters of ``heldout_scripts``
    only, every alphabet that has >= ``min_per_alphabet`` letters (no class / alphabet
    targets), all in the 'test' split. Code points in ``exclude_codepoints`` are never
    used; in held-out mode they are also rendered as references, and held-out letters
    that look like one of them (cosine > ``cross_script_cos``) are dropped.
    """
    try:
        import fontTools
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("fontTools is required to generate glyphs: pip install fonttools") from exc
    js = jitter or JitterSettings()
    t0 = time.time()

    def log(msg: str) -> None:
        if verbose:
            print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr)

    paths = [Path(p) for p in font_paths] if font_paths else discover_fonts(font_dirs)
    if not paths:
        raise SystemExit(
            "no font files found (looked in "
            f"{', '.join(str(d) for d in (font_dirs or default_font_dirs()))}); "
            f"install fonts, e.g. `{APT_HINT}`, or pass --font-dir"
        )
    _script_sizes()  # build the script table once, before worker processes fork
    scan = partial(_scan_font, heldout=True) if heldout else _scan_font
    scanned = [s for s in _pool_map(scan, [str(p) for p in paths], processes) if s]
    log(f"scanned {len(scanned)} font files")
    coverage: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for path, weight, width, cps in scanned:
        for cp in cps:
            coverage[cp].append((path, weight, width))
    if not coverage:
        raise SystemExit(f"the fonts found cover no eligible letters; install `{APT_HINT}`")

    exclude = frozenset(int(c) for c in (exclude_codepoints or ()))
    hs_scripts = tuple(heldout_scripts)
    if heldout:
        # candidates: held-out letters, at most 8x the alphabet size per script
        # (well-covered first, then a seeded order) to bound the reference renders
        pool: dict[str, list[int]] = defaultdict(list)
        for cp in sorted(coverage):
            hs = heldout_script(cp, hs_scripts)
            if hs is not None and cp not in exclude:
                pool[hs].append(cp)
        candidates: list[int] = []
        for hs, letters in sorted(pool.items()):
            rng = np.random.default_rng([seed, sum(map(ord, hs)), len(hs), 5])
            keys = rng.random(len(letters))
            ranked = sorted(
                range(len(letters)), key=lambda i: (-min(len(coverage[letters[i]]), 8), keys[i])
            )
            candidates += [letters[i] for i in ranked[: 8 * max_per_alphabet]]
        anchors = sorted(cp for cp in coverage if cp in exclude)
        script_fn = partial(heldout_script, scripts=hs_scripts)
    else:
        candidates = sorted(cp for cp in coverage if cp not in exclude)
        anchors = []
        script_fn = letter_script
    log(f"{len(candidates)} candidate letters, {len(anchors)} excluded letters as references")

    # reference rendering: the most 'regular' covering font
    ref_font: dict[str, list[int]] = defaultdict(list)
    for cp in sorted(set(candidates) | set(anchors)):
        fonts = coverage[cp]
        best = min(fonts, key=lambda f: (abs(f[1] - 400), abs(f[2] - 5), Path(f[0]).name))
        ref_font[best[0]].append(cp)
    refs = [
        r
        for chunk in _pool_map(_reference_task, sorted(ref_font.items()), processes)
        for r in chunk
    ]
    anchor_set = frozenset(anchors)
    anchor_refs = [v for cp, v, _ in refs if cp in anchor_set and v is not None]
    refs = [
        (cp, v)
        for cp, v, extent in refs
        if cp not in anchor_set and v is not None and extent >= min_em
    ]
    log(f"{len(candidates)} candidate letters, {len(refs)} render at >= {min_em} em")
    dropped_lookalike = 0
    if anchor_refs and refs:
        # held-out letters must not look like a letter of the excluded set
        def unit(x: np.ndarray) -> np.ndarray:
            x = x.reshape(len(x), -1).astype(np.float32)
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

        sims = unit(np.stack([v for _, v in refs])) @ unit(np.stack(anchor_refs)).T
        ok = sims.max(axis=1) <= cross_script_cos
        dropped_lookalike = int((~ok).sum())
        refs = [r for r, k in zip(refs, ok) if k]
        log(f"dropped {dropped_lookalike} look-alikes of excluded letters")

    cps = [cp for cp, _ in refs]
    scripts = [script_fn(cp) or "" for cp in cps]
    vecs = np.stack([v.reshape(-1) for _, v in refs]) if refs else np.zeros((0, 576))
    per_script = defaultdict(int)
    for s in scripts:
        per_script[s] += 1
    # look-alikes: keep the letter in the smaller alphabet (it needs it more)
    order = sorted(range(len(cps)), key=lambda i: (per_script[scripts[i]], scripts[i], cps[i]))
    kept = _dedup(order, vecs, scripts, cross_script_cos, within_script_cos)
    by_script: dict[str, list[int]] = defaultdict(list)
    for i in kept:
        by_script[scripts[i]].append(cps[i])
    log(f"{len(kept)} letters after look-alike removal, {len(by_script)} scripts")

    # per alphabet: prefer well-covered letters (>= 8 files count the same), seeded order
    style_cap = 8
    chosen: dict[str, list[int]] = {}
    score: dict[str, float] = {}
    for s, letters in sorted(by_script.items()):
        if len(letters) < min_per_alphabet:
            continue
        rng = np.random.default_rng([seed, sum(map(ord, s)), len(s)])
        keys = rng.random(len(letters))
        ranked = sorted(
            range(len(letters)), key=lambda i: (-min(len(coverage[letters[i]]), style_cap), keys[i])
        )
        chosen[s] = sorted(letters[i] for i in ranked[:max_per_alphabet])
        score[s] = float(np.median([len(coverage[cp]) for cp in chosen[s]]))
    ranked_scripts = sorted(chosen, key=lambda s: (-score[s], -len(chosen[s]), s))
    selected: list[str] = []
    total = 0
    for s in ranked_scripts:
        if not heldout and total >= min_classes and len(selected) >= min_alphabets:
            break
        selected.append(s)
        total += len(chosen[s])
    if not heldout and (total < min_classes or len(selected) < min_alphabets):
        print(
            f"warning: only {total} classes in {len(selected)} alphabets available", file=sys.stderr
        )
    if heldout:
        split_of = {s: "test" for s in selected}
    else:
        split_of = assign_splits({s: len(chosen[s]) for s in selected}, seed)
    split_rank = {"train": 0, "val": 1, "test": 2}
    alphabets = sorted(selected, key=lambda s: (split_rank[split_of[s]], s))
    class_alphabet: list[int] = []
    class_cp: list[int] = []
    for a, s in enumerate(alphabets):
        for cp in chosen[s]:
            class_alphabet.append(a)
            class_cp.append(cp)
    log(f"selected {len(class_cp)} classes in {len(alphabets)} alphabets; rendering")

    tasks = []
    for cp in class_cp:
        fonts = sorted({(p, w) for p, w, _ in coverage[cp]})
        tasks.append((cp, fonts, samples, seed, js))
    crops = _pool_map(_class_task, tasks, processes)
    keep = [i for i, c in enumerate(crops) if len(c) == samples]
    if len(keep) < len(crops):
        log(f"dropping {len(crops) - len(keep)} classes that failed to render")
    crops = [crops[i] for i in keep]
    class_alphabet = [class_alphabet[i] for i in keep]
    class_cp = [class_cp[i] for i in keep]
    log("rendered")

    ca = np.asarray(class_alphabet, np.int16)
    split_names = np.asarray([split_of[s] for s in alphabets])
    test_idx = np.flatnonzero(split_names[ca] == "test")
    eval_idx = test_idx if test_idx.size >= 5 else np.arange(len(crops))
    calibration: list[tuple[float, float]] = []
    episodes = 2000
    if shift is None and len(eval_idx) >= 5 and samples >= 6:
        grid = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
        for s in grid:
            imgs = place_all([crops[i] for i in eval_idx], s, seed)
            calibration.append((s, nearest_neighbour_accuracy(imgs, episodes=1000, seed=seed)))
        # linear interpolation between the bracketing grid points
        shift = grid[int(np.argmin([abs(a - target_accuracy) for _, a in calibration]))]
        for (s0, a0), (s1, a1) in itertools.pairwise(calibration):
            if (a0 - target_accuracy) * (a1 - target_accuracy) <= 0 and a0 != a1:
                shift = round(s0 + (s1 - s0) * (a0 - target_accuracy) / (a0 - a1), 2)
                break
        log(f"calibrated shift {shift} from {calibration}")
    shift = 2.0 if shift is None else shift
    images = place_all(crops, shift, seed)
    queries = min(5, samples - 1)

    def nn_acc(x: np.ndarray) -> float | None:
        if len(x) < 5 or queries < 1:
            return None
        return nearest_neighbour_accuracy(x, queries=queries, episodes=episodes, seed=seed)

    acc_test = nn_acc(images[eval_idx])
    acc_all = nn_acc(images)
    log(f"NN 5-way 1-shot: test {acc_test}, all {acc_all}")

    import PIL
    from PIL import features

    used = sorted({Path(p).name for cp in class_cp for p, _, _ in coverage[cp]})
    split_sizes = {k: int((split_names[ca] == k).sum()) for k in ("train", "val", "test")}
    metadata = {
        "description": "Omniglot-shaped benchmark of rendered Unicode letters: "
        "alphabet = script, class = letter, white ink on black, 28x28 uint8",
        "generator": "tools/glyphs_generate.py",
        "settings": {
            "seed": seed,
            "samples": samples,
            "shift_px": shift,
            "shift_rule": "uniform sub-pixel offset in [-shift, shift] per axis from the centre, "
            "clipped to keep the glyph on the canvas",
            "jitter": {
                "render_size_px": list(js.render_size),
                "rotation_deg": js.rotation_deg,
                "scale_xy": list(js.scale),
                "shear": js.shear,
                "mesh_warp_fraction": js.warp,
                "mesh_cells": js.warp_cells,
                "long_side_px": list(js.long_side),
                "stroke_filter": "3x3 max (weight<=350: p=0.6), 3x3 min (weight>=650: p=0.5), "
                "else max p=0.2 / min p=0.2",
            },
            "canvas": CANVAS,
            "grey_levels": LEVELS,
            "contrast": "each image stretched so its brightest pixel is 255",
            "min_em": min_em,
            "cross_script_cos": cross_script_cos,
            "within_script_cos": within_script_cos,
            "min_classes": min_classes,
            "min_alphabets": min_alphabets,
            "per_alphabet": [min_per_alphabet, max_per_alphabet],
            "split_targets": {"train": 1000, "val": 200, "test": 400},
            "target_accuracy": target_accuracy,
        },
        "calibration": [
            {"shift_px": s, "nn_acc_test_1000_episodes": round(a, 4)} for s, a in calibration
        ],
        "nn_5way_1shot": {
            "test": acc_test and round(acc_test, 4),
            "all": acc_all and round(acc_all, 4),
            "episodes": episodes,
            "queries_per_class": queries,
            "metric": "cosine, raw pixels",
            "seed": seed,
        },
        "counts": {
            "classes": len(class_cp),
            "alphabets": len(alphabets),
            "samples": samples,
            "splits": split_sizes,
            "alphabets_per_split": {k: int((split_names == k).sum()) for k in split_sizes},
            "font_files_scanned": len(scanned),
            "font_files_used": len(used),
        },
        "versions": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "fonttools": fontTools.version,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "unicodedata": unicodedata.unidata_version,
        },
        "fonts": {name: licence_of(name) for name in used},
        "font_note": "rendered bitmaps are program output, not font software",
        "script_heuristic": "words of the Unicode character name before the first role word "
        "(LETTER, CAPITAL, SMALL, SYLLABLE, ...)",
    }
    if heldout:
        alphabet_fonts = {
            s: sorted({Path(p).name for cp in chosen[s] for p, _, _ in coverage[cp]})
            for s in alphabets
        }
        metadata["description"] = (
            "Held-out alphabets (cross-domain meta-test target) of rendered Unicode letters: "
            "pictographic / logographic / syllabic scripts absent from the main glyph set, "
            "alphabet = script, class = letter, white ink on black, 28x28 uint8, "
            "every alphabet in the 'test' split"
        )
        metadata["settings"]["split_targets"] = {"test": "all alphabets"}
        metadata["settings"]["heldout_scripts"] = list(hs_scripts)
        metadata["heldout"] = {
            "scripts_requested": list(hs_scripts),
            "alphabet_classes": {s: int((ca == a).sum()) for a, s in enumerate(alphabets)},
            "alphabet_fonts": alphabet_fonts,
            "single_font_alphabets": [s for s in alphabets if len(alphabet_fonts[s]) == 1],
            "excluded_codepoints": len(exclude),
            "excluded_letters_rendered_as_references": len(anchor_refs),
            "dropped_as_lookalike_of_excluded": dropped_lookalike,
            "candidates_per_script_cap": 8 * max_per_alphabet,
            "note": "samples vary by font file where several cover a letter (cycled), and only "
            "by jitter in single-font alphabets",
        }
    return {
        "images": images,
        "class_alphabet": ca,
        "class_codepoint": np.asarray(class_cp, np.int32),
        "alphabets": np.asarray(alphabets, dtype=str),
        "alphabet_split": split_names.astype(str),
        "metadata": metadata,
    }


def save(arrays: dict[str, Any], out: str | Path) -> None:
    """Write ``arrays`` (as returned by :func:`generate`) with ``np.savez_compressed``."""
    data = dict(arrays)
    data["metadata"] = np.asarray(json.dumps(data["metadata"], indent=1, sort_keys=True))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as fh:
        np.savez_compressed(fh, **data)


def write_sample_png(
    arrays: dict[str, Any],
    path: str | Path,
    rows: int = 12,
    cols: int = 12,
    scale: int = 3,
    seed: int = 0,
) -> None:
    """Grid picture: ``rows`` classes (from different alphabets) x ``cols`` samples."""
    images = arrays["images"]
    ca = np.asarray(arrays["class_alphabet"])
    rng = np.random.default_rng([seed, 4])
    alph = rng.permutation(np.unique(ca))[:rows]
    picks = [int(rng.choice(np.flatnonzero(ca == a))) for a in sorted(alph)]
    cols = min(cols, images.shape[1])
    cell = CANVAS * scale + 2
    sheet = Image.new("L", (cols * cell + 2, len(picks) * cell + 2), 128)
    for r, c in enumerate(picks):
        for j in range(cols):
            tile = Image.fromarray(images[c, j]).resize(
                (CANVAS * scale,) * 2, Image.Resampling.NEAREST
            )
            sheet.paste(tile, (2 + j * cell, 2 + r * cell))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .npz path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument(
        "--shift",
        type=float,
        default=None,
        help="placement shift in px (default: calibrate to ~42.5%% NN accuracy)",
    )
    ap.add_argument("--font-dir", action="append", default=None, help="font folder (repeatable)")
    ap.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--sample-png", default=None, help="also write a grid picture of samples")
    ap.add_argument(
        "--heldout",
        action="store_true",
        help="build the held-out alphabets (HELDOUT_SCRIPTS, all in the 'test' split) instead "
        "of the main set; the shift defaults to the first --exclude file's calibrated shift",
    )
    ap.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="NPZ",
        help="glyph .npz whose code points must not be used (repeatable)",
    )
    args = ap.parse_args(argv)
    exclude_cps: set[int] = set()
    excluded: list[dict[str, Any]] = []
    shift = args.shift
    shift_source = "--shift" if shift is not None else "calibrated"
    for path in args.exclude or ():
        ex = load_glyph_arrays(path)
        exclude_cps.update(int(c) for c in ex["class_codepoint"])
        ex_shift = ex["metadata"].get("settings", {}).get("shift_px")
        excluded.append(
            {"file": Path(path).name, "classes": len(ex["class_codepoint"]), "shift_px": ex_shift}
        )
        if args.heldout and shift is None and ex_shift is not None:
            shift, shift_source = float(ex_shift), f"calibrated shift of {Path(path).name}"
    arrays = generate(
        font_dirs=args.font_dir,
        seed=args.seed,
        samples=args.samples,
        shift=shift,
        processes=args.processes,
        verbose=True,
        heldout=args.heldout,
        exclude_codepoints=exclude_cps,
    )
    if excluded:
        arrays["metadata"]["exclude"] = excluded
        arrays["metadata"]["settings"]["shift_source"] = shift_source
    save(arrays, args.out)
    if args.sample_png:
        write_sample_png(arrays, args.sample_png, seed=args.seed)
    m = arrays["metadata"]
    c = m["counts"]
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")
    print(f"classes: {c['classes']}  alphabets: {c['alphabets']}  samples: {c['samples']}")
    print(
        "splits (classes): "
        + ", ".join(f"{k} {v}" for k, v in c["splits"].items())
        + "  (alphabets): "
        + ", ".join(f"{k} {v}" for k, v in c["alphabets_per_split"].items())
    )
    print(f"shift: {m['settings']['shift_px']} px")
    print(
        f"NN 5-way 1-shot accuracy (cosine, raw pixels): test {m['nn_5way_1shot']['test']}, "
        f"all {m['nn_5way_1shot']['all']}"
    )
    if "heldout" in m:
        h = m["heldout"]
        print("alphabets: " + ", ".join(f"{k} {v}" for k, v in h["alphabet_classes"].items()))
        print("single-font alphabets: " + ", ".join(h["single_font_alphabets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
