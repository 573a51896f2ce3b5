"""Statistics of the shipped glyph benchmark, plus smoke tests of tools/glyphs_generate.py."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fewmask.datasets.glyphs import (
    GLYPHS_HELDOUT_PATH,
    GLYPHS_PATH,
    GlyphsConfig,
    GlyphsSource,
    load_glyph_arrays,
    load_glyph_split,
    nearest_neighbour_accuracy,
)
from fewmask.errors import ConfigError, DatasetError

TOOLS = Path(__file__).parents[1] / "tools"


def generator(monkeypatch):
    """tools/glyphs_generate.py as a module (it lives outside the package)."""
    if importlib.util.find_spec("fontTools") is None:
        pytest.skip("fontTools not installed (optional extra needed to generate glyphs)")
    monkeypatch.syspath_prepend(str(TOOLS))
    return importlib.import_module("glyphs_generate")


@pytest.fixture(scope="module")
def glyphs() -> dict:
    return load_glyph_arrays()


def test_shapes_and_dtypes(glyphs: dict) -> None:
    images = glyphs["images"]
    assert images.dtype == np.uint8
    assert images.ndim == 4 and images.shape[1:] == (20, 28, 28)
    n = images.shape[0]
    assert n >= 1600
    assert glyphs["class_alphabet"].shape == (n,)
    assert glyphs["class_codepoint"].shape == (n,)
    assert glyphs["class_codepoint"].dtype == np.int32
    assert len(np.unique(glyphs["class_codepoint"])) == n
    assert len(glyphs["alphabets"]) == len(glyphs["alphabet_split"]) >= 30


def test_alphabet_sizes(glyphs: dict) -> None:
    counts = np.bincount(glyphs["class_alphabet"], minlength=len(glyphs["alphabets"]))
    assert counts.min() >= 14 and counts.max() <= 55
    assert len(set(glyphs["alphabets"].tolist())) == len(glyphs["alphabets"])


def test_images_have_ink_and_vary(glyphs: dict) -> None:
    images = glyphs["images"]
    assert (images.reshape(*images.shape[:2], -1).max(axis=2) > 128).all(), "blank image"
    ink = (images > 64).mean(axis=(2, 3))
    assert ink.min() > 0.01
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    # samples of one class differ (fonts + jitter): no class made of copies
    diff = np.abs(flat[:, 1:].astype(np.int16) - flat[:, :1]).max(axis=2)
    assert (diff.max(axis=1) > 0).all()
    assert (diff > 0).mean() > 0.99


def test_splits_disjoint_by_alphabet(glyphs: dict) -> None:
    splits = np.asarray(glyphs["alphabet_split"]).astype(str)
    assert set(splits.tolist()) == {"train", "val", "test"}
    ca = glyphs["class_alphabet"]
    sizes = {s: int((splits[ca] == s).sum()) for s in ("train", "val", "test")}
    assert 850 <= sizes["train"] <= 1150
    assert 130 <= sizes["val"] <= 300
    assert 300 <= sizes["test"] <= 500
    # classes are ordered by split then alphabet
    order = {"train": 0, "val": 1, "test": 2}
    ranks = np.array([order[s] for s in splits[ca]])
    assert (np.diff(ranks) >= 0).all()
    parts = [load_glyph_split(s) for s in ("train", "val", "test")]
    assert sum(len(p[0]) for p in parts) == len(ca)
    cps = [set(p[1].tolist()) for p in parts]
    assert not (cps[0] & cps[1] or cps[0] & cps[2] or cps[1] & cps[2])


def test_nn_accuracy_band(glyphs: dict) -> None:
    test_images, _ = load_glyph_split("test")
    acc = nearest_neighbour_accuracy(test_images, episodes=300, seed=1)
    assert 0.35 <= acc <= 0.50, acc
    recorded = glyphs["metadata"]["nn_5way_1shot"]["test"]
    assert 0.38 <= recorded <= 0.47
    assert abs(acc - recorded) < 0.06


def test_metadata(glyphs: dict) -> None:
    meta = glyphs["metadata"]
    assert meta["counts"]["classes"] == glyphs["images"].shape[0]
    assert meta["settings"]["samples"] == 20
    assert "shift_px" in meta["settings"]
    assert meta["fonts"] and all(isinstance(v, str) for v in meta["fonts"].values())
    assert "pillow" in meta["versions"]


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train, val, test"):
        load_glyph_split("bogus")
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        load_glyph_arrays(missing)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_glyph_arrays(bad)
    assert GLYPHS_PATH.is_file()


def test_nn_accuracy_sanity() -> None:
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, size=(8, 1, 28, 28))
    noisy = np.clip(protos + rng.normal(0, 5, size=(8, 10, 28, 28)), 0, 255).astype(np.uint8)
    assert nearest_neighbour_accuracy(noisy, episodes=50) == 1.0
    with pytest.raises(ValueError):
        nearest_neighbour_accuracy(noisy[:3], episodes=5)


def _smoke_fonts(gen) -> list[Path]:
    fonts = gen.discover_fonts()
    preferred = [
        f
        for f in fonts
        if f.name in ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "NotoSansArmenian-Regular.ttf")
    ]
    chosen = preferred or fonts[:3]
    if not chosen:
        pytest.skip(
            "no font files installed (e.g. apt-get install fonts-noto-core fonts-noto-extra)"
        )
    return chosen


def test_generator_smoke(tmp_path: Path, monkeypatch) -> None:
    gen = generator(monkeypatch)
    fonts = _smoke_fonts(gen)
    arrays = gen.generate(
        font_paths=fonts,
        samples=4,
        shift=1.0,
        min_classes=0,
        min_alphabets=1,
        min_per_alphabet=3,
        max_per_alphabet=6,
        processes=1,
    )
    images = arrays["images"]
    assert images.dtype == np.uint8 and images.shape[1:] == (4, 28, 28)
    assert 3 <= images.shape[0] <= 6
    assert (images.reshape(len(images), 4, -1).max(axis=2) > 128).all()
    out = tmp_path / "tiny.npz"
    gen.save(arrays, out)
    loaded = load_glyph_arrays(out)
    assert loaded["metadata"]["settings"]["shift_px"] == 1.0
    png = tmp_path / "tiny.png"
    gen.write_sample_png(arrays, png)
    assert png.stat().st_size > 0


def test_generator_no_fonts(tmp_path: Path, monkeypatch) -> None:
    gen = generator(monkeypatch)
    with pytest.raises(SystemExit, match="fonts-noto-core fonts-noto-extra"):
        gen.generate(font_dirs=[tmp_path])


def test_generator_is_a_script_outside_the_package() -> None:
    """The generator ships in the repository's tools/, not in the wheel; it still runs."""
    import fewmask.datasets

    package = Path(fewmask.datasets.__file__).parents[1]
    assert not list(package.rglob("glyphs_generate.py"))
    result = subprocess.run(
        [sys.executable, str(TOOLS / "glyphs_generate.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--heldout" in result.stdout and "--exclude" in result.stdout


# --------------------------------------------------------------------------- held-out alphabets

HELDOUT_SCRIPT_NAMES = {
    "EGYPTIAN",
    "CUNEIFORM",
    "YI",
    "TANGUT",
    "NUSHU",
    "LINEAR A",
    "LINEAR B",
    "ANATOLIAN",
    "BAMUM",
    "VAI",
    "OLD PERSIAN",
}


@pytest.fixture(scope="module")
def heldout() -> dict:
    return load_glyph_arrays(GLYPHS_HELDOUT_PATH)


def test_heldout_shapes_and_counts(heldout: dict) -> None:
    images = heldout["images"]
    assert images.dtype == np.uint8
    assert images.ndim == 4 and images.shape[1:] == (20, 28, 28)
    n = images.shape[0]
    assert 200 <= n <= 650
    assert heldout["class_alphabet"].shape == (n,)
    assert heldout["class_codepoint"].shape == (n,)
    assert heldout["class_codepoint"].dtype == np.int32
    assert len(np.unique(heldout["class_codepoint"])) == n
    alphabets = heldout["alphabets"].astype(str).tolist()
    assert len(alphabets) == len(heldout["alphabet_split"]) >= 4
    assert len(set(alphabets)) == len(alphabets)
    assert set(alphabets) <= HELDOUT_SCRIPT_NAMES
    counts = np.bincount(heldout["class_alphabet"], minlength=len(alphabets))
    assert counts.min() >= 14 and counts.max() <= 55
    assert GLYPHS_HELDOUT_PATH.stat().st_size < 3.5e6


def test_heldout_disjoint_from_main(glyphs: dict, heldout: dict) -> None:
    main_cps = set(glyphs["class_codepoint"].tolist())
    held_cps = set(heldout["class_codepoint"].tolist())
    assert not main_cps & held_cps
    main_alphabets = set(glyphs["alphabets"].astype(str).tolist())
    assert not main_alphabets & set(heldout["alphabets"].astype(str).tolist())
    meta = heldout["metadata"]
    assert meta["exclude"][0]["file"] == "glyphs.npz"
    assert meta["heldout"]["excluded_codepoints"] == len(main_cps)


def test_heldout_images_have_ink_and_vary(heldout: dict) -> None:
    images = heldout["images"]
    assert (images.reshape(*images.shape[:2], -1).max(axis=2) > 128).all(), "blank image"
    assert (images > 64).mean(axis=(2, 3)).min() > 0.01
    flat = images.reshape(images.shape[0], images.shape[1], -1)
    diff = np.abs(flat[:, 1:].astype(np.int16) - flat[:, :1]).max(axis=2)
    assert (diff.max(axis=1) > 0).all()
    assert (diff > 0).mean() > 0.99


def test_heldout_only_test_split(heldout: dict) -> None:
    assert set(heldout["alphabet_split"].astype(str).tolist()) == {"test"}
    images, cps = load_glyph_split("test", GLYPHS_HELDOUT_PATH)
    assert images.shape == heldout["images"].shape
    assert (cps == heldout["class_codepoint"]).all()
    for split in ("train", "val"):
        with pytest.raises(ValueError, match=r"glyphs_heldout\.npz.*only has a 'test' split"):
            load_glyph_split(split, GLYPHS_HELDOUT_PATH)


def test_heldout_same_settings_as_main(glyphs: dict, heldout: dict) -> None:
    main_settings = glyphs["metadata"]["settings"]
    settings = heldout["metadata"]["settings"]
    assert settings["shift_px"] == main_settings["shift_px"]
    assert settings["jitter"] == main_settings["jitter"]
    assert settings["samples"] == 20
    meta = heldout["metadata"]
    assert meta["counts"]["classes"] == heldout["images"].shape[0]
    assert meta["counts"]["splits"]["test"] == heldout["images"].shape[0]
    assert meta["fonts"] and all(isinstance(v, str) for v in meta["fonts"].values())
    alphabet_fonts = meta["heldout"]["alphabet_fonts"]
    assert set(alphabet_fonts) == set(heldout["alphabets"].astype(str).tolist())
    single = [a for a, f in alphabet_fonts.items() if len(f) == 1]
    assert sorted(meta["heldout"]["single_font_alphabets"]) == sorted(single)


def test_heldout_nn_accuracy_band(heldout: dict) -> None:
    images, _ = load_glyph_split("test", GLYPHS_HELDOUT_PATH)
    acc = nearest_neighbour_accuracy(images, episodes=300, seed=1)
    assert 0.30 <= acc <= 0.70, acc
    recorded = heldout["metadata"]["nn_5way_1shot"]["test"]
    assert 0.30 <= recorded <= 0.70
    assert abs(acc - recorded) < 0.06


def test_heldout_generator_smoke(tmp_path: Path, monkeypatch) -> None:
    gen = generator(monkeypatch)
    discover_fonts, generate, heldout_script = gen.discover_fonts, gen.generate, gen.heldout_script
    wanted = ("NotoSansVai-Regular.ttf", "NotoSansLinearB-Regular.ttf")
    fonts = [f for f in discover_fonts() if f.name in wanted]
    if len(fonts) < 2:
        pytest.skip("Noto Vai / Linear B fonts not installed (apt-get install fonts-noto-extra)")
    exclude = {0xA500, 0xA501, 0x10000}  # VAI SYLLABLE EE, EEN; LINEAR B SYLLABLE A
    assert heldout_script(0xA500) == "VAI" and heldout_script(0x10000) == "LINEAR B"
    assert heldout_script(0x17000) == "TANGUT"  # unnamed in unicodedata
    assert heldout_script(ord("A")) is None
    arrays = generate(
        font_paths=fonts,
        samples=4,
        shift=1.0,
        min_per_alphabet=3,
        max_per_alphabet=5,
        processes=1,
        heldout=True,
        exclude_codepoints=exclude,
    )
    images = arrays["images"]
    assert images.dtype == np.uint8 and images.shape == (10, 4, 28, 28)
    assert (images.reshape(len(images), 4, -1).max(axis=2) > 128).all()
    assert not set(arrays["class_codepoint"].tolist()) & exclude
    assert arrays["alphabets"].tolist() == ["LINEAR B", "VAI"]
    assert arrays["alphabet_split"].tolist() == ["test", "test"]
    assert sorted(arrays["metadata"]["heldout"]["single_font_alphabets"]) == ["LINEAR B", "VAI"]


# --------------------------------------------------------------------------- the dataset


def test_dataset_is_the_npz_in_loader_order() -> None:
    """The loader's tensors are the .npz arrays, classes in file order, samples in order."""
    arrays, codepoints = load_glyph_split("val")
    data = GlyphsSource(GlyphsConfig()).load("val")
    classes, samples = arrays.shape[:2]
    assert data.name == "glyphs/val" and data.images.shape == (classes * samples, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(arrays).reshape(-1, 28, 28))
    assert data.labels.tolist() == [c for c in range(classes) for _ in range(samples)]
    assert data.class_names[0] == f"U+{int(codepoints[0]):04X}"
    rotated = GlyphsSource(GlyphsConfig(rotations=True)).load("val")
    assert rotated.num_classes == 4 * classes and rotated.class_names[classes] == (
        f"{data.class_names[0]}/rot90"
    )
    first = rotated.images[rotated.labels == classes]
    assert torch.equal(first, torch.rot90(data.images[data.labels == 0], 1, dims=(2, 3)))


def test_dataset_heldout_and_bad_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FEWMASK_CACHE", str(tmp_path / "cache"))
    heldout = GlyphsSource(GlyphsConfig(set="heldout"))
    assert heldout.splits == ("test",) and heldout.load("test").name == "glyphs:heldout/test"
    with pytest.raises(DatasetError, match="glyphs:heldout: unknown split 'train'; splits: test"):
        heldout.load("train")
    with pytest.raises(DatasetError, match=str(tmp_path / "none.npz")):
        GlyphsSource(GlyphsConfig(path=str(tmp_path / "none.npz"))).load("train")
    with pytest.raises(ConfigError, match=r"\$\.set: 'other' is not one of"):
        GlyphsSource(GlyphsConfig(set="other"))
    assert not (tmp_path / "cache").exists(), "the glyph set is package data: never cached"


def test_package_data_ships_the_glyph_sets() -> None:
    """pyproject's package-data globs name the shipped .npz files (a wheel carries them)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["fewmask"]
    shipped = {p for g in globs for p in (root / "fewmask").glob(g)}
    assert {GLYPHS_PATH, GLYPHS_HELDOUT_PATH} <= shipped
    assert any(p.parent.name == "splits" for p in shipped)
