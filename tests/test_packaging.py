"""The distributions as a user installs them: the core wheel alone, the ``plugins`` extra, the
plugin wheels' READMEs, and the install hint for a first-party name that is not installed.

The core-alone test installs the wheel into a fresh virtualenv without the project's packages.
Installing torch into it (``pip install -c constraints.txt torch==2.14.1``, from local disk)
takes minutes and about 6 GB, too much for the suite. Instead the venv sees this interpreter's
site-packages through a ``.pth`` file pointing at a folder of links to every entry *except*
fewmask, its plugins, the editable-install hooks, torchvision and timm: torch and the declared
dependencies are importable, the optional extras are not, and fewmask comes only from the wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fewmask.registry.known import OUTSIDE_PLUGINS_EXTRA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
HIDDEN = ("fewmask", "__editable__", "torchvision", "timm", "_distutils_hack")


def build_wheel(source: Path, out: Path, tmp: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of ``source``'s pyproject, README and package (no build
    files land in the checkout); setuptools comes from this environment: nothing is downloaded."""
    copy = tmp / f"src-{source.name}"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (source / name).is_file():
            shutil.copy(source / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for package in source.glob("fewmask*/__init__.py"):
        shutil.copytree(package.parent, copy / package.parent.name, ignore=ignore)
    before = set(out.glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(out), str(copy)], check=True, capture_output=True, timeout=600)
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The core wheel and every plugin wheel, in one folder (what ``--find-links`` reads)."""
    tmp = tmp_path_factory.mktemp("wheels")
    out = tmp / "dist"
    out.mkdir()
    for source in [ROOT, *PLUGINS]:
        build_wheel(source, out, tmp)
    return out


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A fresh venv that sees torch and fewmask's dependencies but no fewmask, plugin,
    torchvision or timm (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = tmp / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.startswith(HIDDEN) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(target, "fewmask_test_deps.pth").write_text(f"{deps}\n")
    return venv


def run_in(venv: Path, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FEWMASK_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def pip_install(venv: Path, wheels: Path, *requirements: str) -> None:
    """pip (this environment's) installing into ``venv`` from the wheels folder alone."""
    target = ["--python", str(venv / "bin" / "python")]
    offline = ["--no-index", "--find-links", str(wheels)]
    command = [sys.executable, "-m", "pip", *target, "install", "-q", *offline, *requirements]
    subprocess.run(command, check=True, capture_output=True, timeout=600)


@pytest.mark.slow
def test_the_core_wheel_alone_lists_validates_and_trains(wheels, bare_venv, tmp_path):
    """Without torchvision, timm or any plugin: `plugins`, `validate` and a short MAML `train`
    work; Meta-ticket's names say which distribution to install. Then the `plugins` extra,
    installed from the wheels, brings every plugin except timm's (which needs timm)."""
    config = tmp_path / "glyphs.yaml"
    shutil.copy(ROOT / "examples" / "metaticket_glyphs.yaml", config)
    (core,) = wheels.glob("fewmask-*.whl")
    pip_install(bare_venv, wheels, "--no-deps", str(core))

    probe = "import fewmask, importlib.util as u; print(fewmask.__file__, "
    probe += "u.find_spec('torchvision'), u.find_spec('timm'))"
    out = run_in(bare_venv, "python", "-c", probe, cwd=tmp_path).stdout
    assert str(bare_venv) in out and out.strip().endswith("None None"), out

    listed = run_in(bare_venv, "fewmask", "plugins", cwd=tmp_path).stdout
    assert re.search(r"objective\s+maml\s+fewmask \[builtins\]", listed), listed
    assert "metaticket" not in listed

    refused = run_in(bare_venv, "fewmask", "validate", str(config), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "pip install fewmask-plugin-metaticket" in refused.stderr

    maml = ["-o", "objective.name=maml"]
    run_in(bare_venv, "fewmask", "validate", str(config), *maml, cwd=tmp_path)
    tiny = [
        *maml,
        *("-o", "train.iterations=3", "-o", "train.val_episodes=0"),
        *("-o", "train.test_episodes=5", "-o", "train.progress=false"),
    ]
    trained = run_in(
        bare_venv, "fewmask", "train", str(config), *tiny, "--run-dir", "run", cwd=tmp_path
    )
    assert "accuracy" in trained.stdout and (tmp_path / "run" / "results.json").is_file()

    pip_install(bare_venv, wheels, "fewmask[plugins]")
    listed = run_in(bare_venv, "fewmask", "plugins", cwd=tmp_path).stdout
    for name in ("metaticket", "iterand", "boil"):
        assert re.search(rf"\s{name}\s+fewmask-plugin-", listed), (name, listed)
    run_in(bare_venv, "fewmask", "validate", str(config), cwd=tmp_path)


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return archive.read(name).decode()


@pytest.mark.slow
def test_every_plugin_wheel_carries_its_readme(wheels):
    for plugin in PLUGINS:
        (wheel,) = wheels.glob(f"{plugin.name.replace('-', '_')}-*.whl")
        metadata = wheel_metadata(wheel)
        assert "Description-Content-Type: text/markdown" in metadata, plugin.name
        first_line = (plugin / "README.md").read_text().splitlines()[0]
        assert first_line in metadata, plugin.name


@pytest.mark.slow
def test_the_core_wheel_declares_the_plugin_extras(wheels):
    (core,) = wheels.glob("fewmask-*.whl")
    metadata = wheel_metadata(core)
    for plugin in PLUGINS:
        extra = "all" if plugin.name in OUTSIDE_PLUGINS_EXTRA else "plugins"
        assert re.search(rf"Requires-Dist: {plugin.name}\W.*extra == \"{extra}\"", metadata)
    assert re.search(r"Requires-Dist: fewmask\[.*plugins.*\]; extra == \"all\"", metadata)


def test_the_extras_and_plugin_dependencies_are_declared():
    """`fewmask[all]` names every plugin of the repository; `plugins` every one without extra
    third-party needs; a plugin that builds on another declares it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = {p.name for p in PLUGINS}

    def named(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=~!\[; ]", r, maxsplit=1)[0] for r in requirements}

    assert names - set(OUTSIDE_PLUGINS_EXTRA) == named(extras["plugins"])
    assert (
        set(OUTSIDE_PLUGINS_EXTRA) <= named(extras["all"]) and "fewmask[plugins" in extras["all"][0]
    )
    for plugin in PLUGINS:
        meta = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
        assert meta["readme"] == "README.md" and (plugin / "README.md").is_file(), plugin.name
        assert "fewmask" in named(meta["dependencies"]), plugin.name
    iterand = tomllib.loads((ROOT / "plugins/fewmask-plugin-iterand/pyproject.toml").read_text())
    assert "fewmask-plugin-metaticket" in named(iterand["project"]["dependencies"])


def test_the_install_hints_name_what_the_plugins_register():
    """fewmask.registry.known (what an unknown name suggests installing) matches what the
    installed first-party plugins register, and names only their distributions."""
    from fewmask.registry.known import PROVIDERS
    from fewmask.session import load_registry

    registry = load_registry(strict=True)
    registered = {
        (i.kind, i.name): i.provider.distribution
        for i in registry.list()
        if i.provider.distribution.startswith("fewmask-plugin-")
    }
    assert {k: v for k, v in PROVIDERS.items() if k in registered} == registered
    assert set(PROVIDERS.values()) <= {p.name for p in PLUGINS}


def test_an_unknown_first_party_name_says_what_to_install(monkeypatch):
    import importlib.metadata

    from fewmask.session import load_registry

    registry = load_registry(autoload=False, only=(), blocked=())
    message = registry.unknown_message("masker", "metaticket")
    assert "fewmask-plugin-metaticket, which is installed but was not loaded" in message

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    message = registry.unknown_message("inner_optimizer", "boil")
    assert "pip install fewmask-plugin-lrpolicies" in message and "fewmask[plugins]" in message
    assert "Did you mean" not in registry.unknown_message("backbone", "timm")
    assert "pip install" not in registry.unknown_message("masker", "metatiket")


def test_the_plugin_docs_build_wheels_with_pip():
    """docs/plugins.md builds wheels with what is installed (`pip wheel`), not `python -m build`."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert "python -m build" not in text and "pip wheel --no-deps" in text
    assert "fewmask[plugins]" in text
