"""The third-party plugin template (examples/third-party-plugin), uninstalled.

Its folder goes on ``sys.path`` and a ``.dist-info`` made from its pyproject (name, version,
entry points) on another path entry, so ``importlib.metadata`` finds its entry point as it would
after ``pip install``. Then: the components are listed with their provider, a config using them
validates, bad options are reported with their path, it trains and meta-tests, and it imports
nothing from fewmask but the package root. ``tox -e third-party`` builds and installs the wheel.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fewmask
from fewmask.cli import main
from fewmask.interfaces import COMPONENT_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLE = Path(__file__).parents[1] / "examples" / "third-party-plugin"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
CONFIG = EXAMPLE / "glyphs_tiny.yaml"


@pytest.fixture
def as_installed(monkeypatch, tmp_path):
    """The example as if pip-installed; only its entry point loads. Yields the entry-point names."""
    name, version = PROJECT["name"], PROJECT["version"]
    entry_points = PROJECT["entry-points"]["fewmask"]
    info = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = [f"{ep} = {module}" for ep, module in entry_points.items()]
    (info / "entry_points.txt").write_text("[fewmask]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FEWMASK_DISABLE_PLUGIN_AUTOLOAD", "1")  # what `fewmask` commands load
    monkeypatch.setenv("FEWMASK_LOAD_PLUGINS", ",".join(entry_points))
    fewmask.reset_default_registry()
    yield list(entry_points)
    fewmask.reset_default_registry()
    for module in [m for m in sys.modules if m.split(".")[0] == "fewmask_plugin_example"]:
        del sys.modules[module]


@pytest.fixture
def example_registry(as_installed):
    return fewmask.load_registry(autoload=False, only=as_installed, strict=True)


def test_components_are_listed_with_their_provider(example_registry, capsys):
    for kind, name in [("masker", "global_magnitude"), ("objective", "smoothed_scores")]:
        provider = example_registry.get(kind, name).provider
        assert (provider.plugin, provider.distribution, provider.version) == (
            "example",
            "fewmask-plugin-example",
            "0.1.0",
        )
    assert main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["masker", "global_magnitude", "fewmask-plugin-example", "[example]", "0.1.0"] in [
        row[:5] for row in rows
    ]


def test_example_config_validates(as_installed, capsys):
    assert main(["validate", str(CONFIG)]) == 0
    assert "name: smoothed_scores" in capsys.readouterr().out
    data = yaml.safe_load(CONFIG.read_text())
    del data["masker"]  # the objective's default masker is the plugin's own
    resolved = fewmask.resolve(data)
    assert resolved.components["masker"].name == "global_magnitude"


@pytest.mark.parametrize(
    "override, problem",
    [
        ("objective.options.smoothing=1.5", "$.objective.options.smoothing: must be < 1, got 1.5"),
        ("objective.options.min_lr=20", "$.objective.options.min_lr: must be <= lr (10.0), got"),
        ("masker.options.sparsity=1", "$.masker.options.sparsity: must be < 1, got 1"),
        ("masker.options.sparsty=0.1", "$.masker.options: unknown key(s): sparsty"),
    ],
)
def test_bad_options_are_reported_with_their_path(as_installed, override, problem, capsys):
    assert main(["validate", str(CONFIG), "-o", override]) == 2
    assert problem in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["exact", "fast"])
def test_trains_and_meta_tests_with_its_own_query_loss(
    example_registry, engine, tmp_path, monkeypatch
):
    config = yaml.safe_load(CONFIG.read_text())
    config["run_dir"] = str(tmp_path / "run")
    config["train"].update(iterations=2, val_episodes=0, test_episodes=3, engine=engine)
    trainer = fewmask.build_trainer(config, registry=example_registry)
    assert type(trainer.masker).__name__ == "GlobalMagnitudeMasker"
    scores = {n: p.detach().clone() for n, p in trainer.masker.meta_parameters().items()}
    objective, differentiated = trainer.objective, []

    def query_loss(logits, labels):  # records whether the meta-gradient flows through it
        differentiated.append(logits.requires_grad)
        return type(objective).query_loss(objective, logits, labels)

    monkeypatch.setattr(objective, "query_loss", query_loss)
    results = trainer.fit()
    assert results["iteration"] == 2 and results["episodes"] == 3
    assert 0 <= results["accuracy"] <= 1 and 0 < results["sparsity"] < 1
    assert any(differentiated), "meta-training did not use the objective's query loss"
    learned = trainer.masker.meta_parameters()
    assert any(not torch.equal(learned[n], s) for n, s in scores.items())


def fewmask_imports(source: str) -> list[str]:
    """Every module imported from the ``fewmask`` package (``fewmask`` or ``fewmask.x``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    return [m for m in found if m == "fewmask" or m.startswith("fewmask.")]


def test_the_import_check_catches_private_imports():
    code = "import fewmask\nimport fewmask.config\nfrom fewmask.builtins.outer import OuterConfig\n"
    assert fewmask_imports(code) == ["fewmask", "fewmask.config", "fewmask.builtins.outer"]
    assert fewmask_imports("from fewmask_plugin_example import masker\n") == []


@pytest.mark.parametrize(
    "path",
    sorted([*(EXAMPLE / "fewmask_plugin_example").glob("*.py"), *(EXAMPLE / "tests").glob("*.py")]),
    ids=lambda p: str(p.relative_to(EXAMPLE)),
)
def test_example_imports_only_the_package_root(path):
    assert set(fewmask_imports(path.read_text())) <= {"fewmask"}


DOCS = Path(__file__).parents[1] / "docs" / "writing-plugins.md"


def excerpts() -> list[tuple[str, list[str]]]:
    """The Python blocks of docs/writing-plugins.md that start with ``# <file they quote>``."""
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", DOCS.read_text(), re.S)
    return [(path, [line for line in code.splitlines() if line.strip()]) for path, code in blocks]


def test_every_python_block_of_the_walkthrough_quotes_a_file():
    assert len(excerpts()) == DOCS.read_text().count("```python") >= 5


@pytest.mark.parametrize("path, lines", excerpts(), ids=[p for p, _ in excerpts()])
def test_walkthrough_quotes_the_files_as_they_are(path, lines):
    """Each quoted line is in the file, in the same order (a block may leave lines out)."""
    remaining = iter((DOCS.parents[1] / path).read_text().splitlines())
    for line in lines:
        assert any(line == other for other in remaining), f"{path} no longer has: {line}"


def test_walkthrough_lists_every_kind_with_its_abstract_methods():
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (.*) \|$", DOCS.read_text(), re.M)
    documented = {
        kind: (base, set(re.findall(r"`(\w+)`", methods))) for kind, base, methods in rows
    }
    assert set(documented) == set(COMPONENT_KINDS)
    for kind, cls in COMPONENT_KINDS.items():
        assert documented[kind] == (cls.__name__, set(cls.__abstractmethods__)), kind
