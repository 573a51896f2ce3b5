"""Every example in examples/ and every Python block in README.md and docs/ runs, at a tiny size."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fewmask import default_registry
from fewmask.cli import main
from fewmask.config import options_markdown

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks():
    for path in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(block, id=f"{path.name}-{i}")


@pytest.mark.parametrize("code", list(python_blocks()))
def test_docs_python_blocks_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs>", "exec"), {"__name__": "docs_example"})


def test_compose_in_python_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compose_in_python.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "meta-test accuracy" in result.stdout


TINY = [
    "train.iterations=2",
    "train.val_every=1",
    "train.val_episodes=2",
    "train.test_episodes=3",
    "train.progress=false",
]
SHRINK = {  # paper-size backbones at a CPU-test size; everything else as in the file
    "mlp5": ["backbone.options={width: 0.02}"],
    "resnet12": ["backbone.options={channels: [4, 4, 4, 4]}"],
    "wrn28_10": ["backbone.options={depth: 10, widen_factor: 1}"],
}


def run_tiny(config: Path, extra: list[str], tmp_path: Path) -> str:
    args = ["train", str(config), "--run-dir", str(tmp_path / "run")]
    assert main(args + [x for o in TINY + extra for x in ("-o", o)]) == 0
    return str(tmp_path)


@pytest.mark.parametrize(
    "config",
    sorted([*(ROOT / "examples").glob("*.yaml"), *(ROOT / "examples" / "glyphs").glob("*.yaml")]),
    ids=lambda p: p.name,
)
def test_glyph_example_configs_train_at_tiny_size(config, tmp_path, capsys):
    if "name: torchvision" in config.read_text():  # an env without torchvision skips it
        pytest.importorskip("fewmask_plugin_torchvision")
    run_tiny(config, [], tmp_path)
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "config", sorted((ROOT / "examples" / "paper").glob("*.yaml")), ids=lambda p: p.name
)
def test_paper_example_configs_validate_and_train_on_glyphs(config, tmp_path, capsys):
    """The paper's configs need the real datasets; here they run on the glyph set, shrunk."""
    import yaml

    data = yaml.safe_load(config.read_text())
    assert data["train"]["iterations"] == 30000 and data["sampler"]["options"]["shots"] == 5
    run_tiny(config, ["dataset={name: glyphs}", *SHRINK[data["backbone"]["name"]]], tmp_path)
    assert "accuracy" in capsys.readouterr().out


def test_config_reference_is_current():
    """Every section `fewmask options` prints for the installed components is in docs/config.md
    (an env without some plugin, e.g. timm on torch 2.13, checks the rest)."""
    docs = (ROOT / "docs" / "config.md").read_text()
    for section in options_markdown(default_registry()).split("\n## "):
        assert section in docs, f"docs/config.md is stale at: {section.splitlines()[0]}"


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert block[0].endswith("fewmask train examples/metaticket_glyphs.yaml")
    assert block[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert block[1].split(" && ")[1] in ci and "python -m pytest" in ci


TINY_SETTINGS = {  # appended after a documented command's own settings: later ones win
    "width-sweep": ["widths=[0.05]", "ways=[5]", "shots=[1]"],
    "constant-weights": ["seeds=[1]"],
    "task-gradient": ["inner_lrs=[0.4]", "smooth=1"],
    "cross-domain": ["methods=[maml,metaticket_boil]", "seeds=[1]"],
    "mask-pictures": ["units=4"],
    "mask-locality": [],
}


def documented_experiment_commands():
    """Every distinct `fewmask experiment NAME CONFIG [-o ...] [-x ...]` line in
    examples/experiments/ and docs/, as (name, config, its own -o and -x values)."""
    sources = [*sorted((ROOT / "examples" / "experiments").glob("*.yaml")), *DOCS]
    seen = set()
    for path in sources:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(
            r"fewmask experiment ([a-z-]+) +(examples/\S+\.yaml)([^`\n]*)", text
        ):
            words = shlex.split(match.group(3).split("#")[0])
            own = {"-o": [], "-x": []}
            for flag, value in zip(words, words[1:]):
                if flag in own:
                    own[flag].append(value)
            key = (match.group(1), match.group(2), *own["-o"], "|", *own["-x"])
            if key not in seen:
                seen.add(key)
                yield pytest.param(
                    match.group(1),
                    match.group(2),
                    own["-o"],
                    own["-x"],
                    id=f"{path.name}:{match[1]}",
                )


@pytest.fixture
def debian_fashion_mnist(tmp_path_factory, monkeypatch):
    """The cross-domain commands meta-test on Fashion-MNIST where its Debian package puts it;
    a fresh machine has no package, so a tiny stand-in in the same IDX format goes there."""
    import gzip
    import struct

    import numpy as np

    from fewmask.datasets import fashion_mnist

    root = tmp_path_factory.mktemp("fashion-mnist")
    rng = np.random.default_rng(0)
    for part, per_class in (("train", 20), ("t10k", 2)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        for stem, magic, array in (("images-idx3", 2051, images), ("labels-idx1", 2049, labels)):
            header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
            (root / f"{part}-{stem}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOTS", (str(root),))
    monkeypatch.setenv("FEWMASK_CACHE", str(tmp_path_factory.mktemp("cache")))
    return root


@pytest.mark.parametrize("name, config, own_o, own_x", list(documented_experiment_commands()))
def test_documented_experiment_commands_run_at_tiny_size(
    name, config, own_o, own_x, tmp_path, capsys, debian_fashion_mnist
):
    """The command as documented (its own -o and -x validated too), then shrunk: tiny settings
    come last and win. ``-x run_dir=`` and ``-x run_dirs=`` name runs of the documented
    workflow; here the base config is trained instead."""
    overrides = [*own_o, "backbone.options.width=0.05", "train.meta_batch_size=2", *TINY]
    overrides += ["train.val_episodes=0", "train.test_episodes=5"]
    settings = [s for s in own_x if not s.startswith(("run_dir=", "run_dirs="))]
    settings += TINY_SETTINGS[name]
    args = ["experiment", name, str(ROOT / config), "--out", str(tmp_path), "--no-progress"]
    args += [x for o in overrides for x in ("-o", o)]
    args += [x for s in settings for x in ("-x", s)]
    assert main(args) == 0
    assert list(tmp_path.glob("*.csv")) and list(tmp_path.glob("*.png"))
    assert "outputs in" in capsys.readouterr().out


def test_nothing_in_the_checkout_blocks_the_readme_venv():
    """`python3.11 -m venv .venv` (both README commands) needs `.venv` free or a folder."""
    assert not (ROOT / ".venv").is_file()
