"""The import structure: pyproject.toml's import-linter contracts hold, and there is no cycle.

docs/architecture.md draws the same layers; keep the three in step.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]


def installed_contracts(tmp_path: Path) -> Path:
    """pyproject.toml's contracts restricted to the root packages installed here (e.g. an env
    without the timm plugin checks the others); the core is always present."""
    import json

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    present = [p for p in config["root_packages"] if importlib.util.find_spec(p) is not None]
    assert "fewmask" in present

    def keep(modules: list[str]) -> list[str]:
        return [m for m in modules if m.split(".")[0] in present]

    contracts = []
    for contract in config["contracts"]:
        contract = dict(contract)
        for key in ("source_modules", "forbidden_modules", "modules"):
            if key in contract:
                contract[key] = keep(contract[key])
        if all(contract.get(k, [None]) for k in ("source_modules", "forbidden_modules")):
            if len(contract.get("modules", [None, None])) >= 2:
                contracts.append(contract)
    lines = ["[importlinter]", "root_packages =\n    " + "\n    ".join(present)]
    for contract in contracts:
        lines.append(f"[importlinter:contract:{contract.pop('id')}]")
        for key, value in contract.items():
            if isinstance(value, list):
                value = "\n    " + "\n    ".join(value)
            lines.append(f"{key} = {json.dumps(value) if isinstance(value, bool) else value}")
    path = tmp_path / ".importlinter"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_contracts_hold(tmp_path):
    config = installed_contracts(tmp_path)
    lint = Path(sys.executable).with_name("lint-imports")
    # import-linter 2.16 takes the file as an argument; 2.15 (the last for Python 3.10) --config
    version = tuple(int(p) for p in importlib.metadata.version("import-linter").split(".")[:2])
    where = [str(config)] if version >= (2, 16) else ["--config", str(config)]
    result = subprocess.run(
        [str(lint), "--no-cache", *where], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_fewmask_has_no_import_cycle():
    graph = grimp.build_graph("fewmask", cache_dir=None)
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if module.startswith(f"{imported}.") or imported.startswith(f"{module}."):
                if imported == "fewmask":  # a module of the package importing the package root
                    pytest.fail(f"{module} imports the package root; import the submodule")
                continue  # a package importing its own submodule is how packages work
            if graph.chain_exists(importer=imported, imported=module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                pytest.fail(f"import cycle: {module} -> {' -> '.join(chain)}")


def test_the_core_imports_without_the_optional_extras():
    """Importing fewmask and its CLI must not pull torchvision, timm or the experiments."""
    code = (
        "import sys, fewmask, fewmask.cli\n"
        "optional = ('torchvision', 'timm', 'fewmask.experiments', 'safetensors', 'onnx',\n"
        "            'onnxruntime')\n"
        "print(sorted(m for m in optional if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def layered_names() -> set[str]:
    """Every module or room named in the layers contract (``a | b`` and ``a : b`` split)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["id"] == "layers")["layers"]
    return {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}


def test_every_root_module_and_room_has_a_contract_line():
    """A new module at the package root, or a new room, must be placed in the layers."""
    package = ROOT / "fewmask"
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted(names - layered_names())
    assert not missing, f"add to [tool.importlinter] layers in pyproject.toml: {missing}"
    stale = sorted(layered_names() - names)
    assert not stale, f"layers name modules that no longer exist: {stale}"


def test_the_root_stays_small():
    """The package root holds the public face and the leaves; everything else lives in a room."""
    modules = [p.stem for p in (ROOT / "fewmask").glob("*.py") if p.stem != "__init__"]
    assert len(modules) <= 10, sorted(modules)


def public_api_reaches(paths: list[Path]) -> list[str]:
    """``file: import`` for every import of a fewmask submodule in ``paths`` (tests of plugins
    and examples may import only the package root, ``fewmask.testing`` and the pytest plugin)."""
    import ast

    allowed = {"fewmask", "fewmask.testing", "fewmask.pytest_plugin"}
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            found += [
                f"{path.relative_to(ROOT)}: {n}"
                for n in names
                if (n == "fewmask" or n.startswith("fewmask.")) and n not in allowed
            ]
    return found


def test_plugins_their_tests_and_examples_use_only_the_package_root():
    paths = [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    paths = [p for p in paths if "build" not in p.parts]
    assert paths
    assert public_api_reaches(paths) == []
