"""Entry-point discovery, load failures, the registry's errors and provenance, `fewmask plugins`."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import attrs
import pytest

import fewmask
from fewmask import session as plugins
from fewmask.builtins.maskers import DenseMasker
from fewmask.registry import Provider, Registry
from fewmask.session import PluginLoadWarning, load_registry


class FakeDist:
    def __init__(self, name: str, version: str):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    def __init__(self, name: str, module: str, dist: str = "fewmask-plugin-fake"):
        self.name, self.module, self.dist = name, module, FakeDist(dist, "9.9")

    def load(self):
        return importlib.import_module(self.module)


@pytest.fixture
def fake_plugin(monkeypatch):
    """A plugin module ``fake_plugin_mod`` registering masker ``fake``, found via an entry point."""
    module = types.ModuleType("fake_plugin_mod")

    class FakeMasker(DenseMasker):
        pass

    @fewmask.hookimpl
    def fewmask_register(registry):
        registry.add_masker("fake", FakeMasker, description="test")

    module.fewmask_register = fewmask_register
    monkeypatch.setitem(sys.modules, "fake_plugin_mod", module)
    eps = [FakeEntryPoint("fake", "fake_plugin_mod")]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    return eps


def test_entry_point_plugin_is_discovered_with_provenance(fake_plugin):
    info = load_registry(strict=True).get("masker", "fake")
    assert info.provider == Provider("fake", "fewmask-plugin-fake", "9.9")
    assert load_registry().get("masker", "dense").provider.distribution == "fewmask"


def test_autoload_switches(fake_plugin, monkeypatch):
    monkeypatch.setenv("FEWMASK_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "fake" not in load_registry().names("masker")
    monkeypatch.setenv("FEWMASK_LOAD_PLUGINS", "fake")
    assert "fake" in load_registry().names("masker")
    monkeypatch.setenv("FEWMASK_DISABLE_PLUGINS", "fake")
    assert "fake" not in load_registry().names("masker")


def test_plugin_that_fails_to_import_is_named_and_strict_raises(monkeypatch):
    eps = [FakeEntryPoint("broken", "no_such_module_xyz", dist="fewmask-plugin-broken")]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    with pytest.warns(
        PluginLoadWarning,
        match=r"'broken' \(fewmask-plugin-broken 9.9\).*"
        r"FEWMASK_DISABLE_PLUGINS=broken",
    ):
        registry = load_registry(strict=False)
    with pytest.raises(fewmask.UnknownComponentError, match="failed to load.*no_such_module_xyz"):
        registry.get("masker", "metaticket")
    with pytest.raises(fewmask.PluginLoadError, match="fewmask-plugin-broken"):
        load_registry(strict=True)


def test_bad_hook_signature_is_reported(monkeypatch):
    module = types.ModuleType("bad_hook_mod")

    @fewmask.hookimpl
    def fewmask_register(registry, extra_arg):
        pass

    module.fewmask_register = fewmask_register
    monkeypatch.setitem(sys.modules, "bad_hook_mod", module)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [FakeEntryPoint("bad", "bad_hook_mod")])
    with pytest.raises(fewmask.PluginLoadError, match="extra_arg"):
        load_registry(strict=True)


def test_duplicate_name_names_both_providers(fake_plugin, monkeypatch):
    module = types.ModuleType("dup_mod")

    @fewmask.hookimpl
    def fewmask_register(registry):
        registry.add_masker("dense", DenseMasker)

    module.fewmask_register = fewmask_register
    monkeypatch.setitem(sys.modules, "dup_mod", module)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [FakeEntryPoint("dup", "dup_mod")])
    with pytest.raises(
        fewmask.DuplicateComponentError,
        match=r"masker 'dense' is registered by both builtins \(fewmask .*\) and dup",
    ):
        load_registry(strict=False)


def test_registry_rejects_wrong_classes_and_suggests_names():
    registry = Registry()
    p = Provider("t", "t", "0")
    with pytest.raises(TypeError, match="does not derive from fewmask.Masker"):
        registry.add("masker", "x", int, provider=p)
    with pytest.raises(TypeError, match="drop the"):
        registry.add("masker", "x", DenseMasker(), provider=p)
    registry.add("masker", "metaticket", DenseMasker, provider=p)
    with pytest.raises(
        fewmask.UnknownComponentError, match="Did you mean 'metaticket'.*Available: metaticket"
    ):
        registry.get("masker", "metatiket")


def test_config_and_description_come_from_the_class_unless_given():
    @attrs.frozen
    class Options:
        sparsity: float = 0.5

    class Declared(DenseMasker):
        config_class = Options
        description = "declared on the class"

    registry = Registry()
    scoped = registry.scoped(Provider("t", "t", "0"))
    scoped.add_masker("declared", Declared)
    scoped.add_masker("given", Declared, config=None, description="given")
    scoped.add_masker("plain", DenseMasker)
    declared = registry.get("masker", "declared")
    assert (declared.config_cls, declared.description) == (Options, "declared on the class")
    assert registry.get("masker", "given").description == "given"
    assert registry.get("masker", "plain").config_cls is None

    class BadConfig(DenseMasker):
        config_class = dict

    class BadDescription(DenseMasker):
        description = ("not", "a string")

    with pytest.raises(TypeError, match="'bad': config must be an attrs class"):
        scoped.add_masker("bad", BadConfig)
    with pytest.raises(TypeError, match="'bad': description must be a string"):
        scoped.add_masker("bad", BadDescription)
    assert "bad" not in registry.names("masker")


def test_every_hookspec_is_documented():
    from pathlib import Path

    from fewmask.registry import hookspecs

    doc = (Path(__file__).parents[1] / "docs" / "writing-plugins.md").read_text()
    specs = [n for n in dir(hookspecs) if n.startswith("fewmask_")]
    assert specs == ["fewmask_register"]
    for name in specs:
        assert f"def {name}(" in doc


def test_cli_plugins_lists_components_with_providers(capsys):
    from fewmask.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "metaticket" in out and "fewmask-plugin-metaticket" in out and "omniglot_mlp" in out
