"""Finding components from the command line: `fewmask plugins KIND --filter PATTERN` and
`fewmask options KIND[.NAME]` (as timm's `list_models(pattern)`)."""

from __future__ import annotations

import json

import pytest

from fewmask.cli import main


def listed(capsys, *args: str) -> list[tuple[str, str]]:
    assert main(["plugins", *args, "--json"]) == 0
    return [(row["kind"], row["name"]) for row in json.loads(capsys.readouterr().out)]


def test_plugins_by_kind_and_pattern(capsys):
    maskers = listed(capsys, "masker")
    assert {("masker", "dense"), ("masker", "metaticket"), ("masker", "iterand")} <= set(maskers)
    assert {kind for kind, _ in maskers} == {"masker"}
    assert listed(capsys, "inner") == listed(capsys, "inner_optimizer")  # the config field works
    assert set(listed(capsys, "--filter", "meta*")) == {
        ("masker", "metaticket"),
        ("objective", "metaticket"),
    }
    assert listed(capsys, "objective", "--filter", "TICK") == [("objective", "metaticket")]


def test_plugins_table_filtered_and_an_unknown_kind(capsys):
    assert main(["plugins", "masker", "--filter", "nothing-like-this"]) == 0
    captured = capsys.readouterr()
    assert "no component matches kind 'masker' and --filter 'nothing-like-this'" in captured.err
    assert main(["plugins", "maskers"]) == 2
    assert "unknown component kind 'maskers'" in capsys.readouterr().err


def test_options_of_one_component_one_kind_or_one_section(capsys):
    assert main(["options", "masker.iterand"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## `masker: {name: iterand}` (fewmask-plugin-iterand)")
    assert "`period`" in out and "`base`" in out and "## `masker: {name: dense}`" not in out
    assert main(["options", "inner"]) == 0
    out = capsys.readouterr().out
    assert "{name: sgd}" in out and "{name: boil}" in out and "{name: dense}" not in out
    assert main(["options", "train"]) == 0
    assert "`threads`" in capsys.readouterr().out
    assert main(["options", "masker.metatiket"]) == 2
    assert "Did you mean 'metaticket'?" in capsys.readouterr().err


def test_options_never_point_below_at_nothing_and_name_every_masker(capsys):
    assert main(["options"]) == 0
    out = capsys.readouterr().out
    assert "see below" not in out
    masker = next(line for line in out.splitlines() if line.startswith("| `masker` |"))
    for name in ("dense", "metaticket", "iterand"):
        assert name in masker, name


@pytest.mark.parametrize("topic", ["experiment", "sampler", "objective.maml"])
def test_every_options_topic_prints_a_table(topic, capsys):
    assert main(["options", topic]) == 0
    assert "| field | type | default | meaning |" in capsys.readouterr().out
