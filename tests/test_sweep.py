"""`fewmask sweep`: axes parsed with every problem named; a bad key stops the grid before any
run; the table groups the seeds of each point (mean +- std over those that finished)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewmask.cli import main
from fewmask.errors import ConfigError
from fewmask.experiments.common import mean_std, percent
from fewmask.experiments.sweep import label, parse_axes, summary

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"


def test_axes_are_parsed_as_yaml_lists():
    axes = parse_axes(["backbone.options.width=[0.5, 1]", "seed=[1,2,3]", "masker.name=dense"])
    assert axes == {"backbone.options.width": [0.5, 1], "seed": [1, 2, 3], "masker.name": ["dense"]}


def test_every_bad_axis_is_named_at_once():
    with pytest.raises(ConfigError) as caught:
        parse_axes(["seed", "width=[]", "seed=[1]", "seed=[2]"])
    text = str(caught.value)
    assert "-x 'seed': expected KEY=[A,B]" in text
    assert "-x 'width=[]': give at least one value" in text
    assert "-x seed: given twice" in text


def test_folder_names_say_the_point():
    assert label({"backbone.options.width": 0.5, "seed": 2}) == "backbone.options.width=0.5_seed=2"
    assert label({"dataset.options.root": "/data/my set"}) == "dataset.options.root=-data-my-set"


def test_an_unknown_key_stops_the_sweep_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["sweep", str(EXAMPLE), "-x", "train.iteratoins=[1,2]", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "variant train.iteratoins=1" in err and "iteratoins" in err
    assert not (out / "runs").exists()


def test_the_table_is_mean_and_std_over_the_seeds_that_finished():
    rows = [
        {"width": 1, "seed": 1, "accuracy": 0.5, "ci95": 0.1},
        {"width": 1, "seed": 2, "accuracy": 0.7, "ci95": 0.1},
        {"width": 2, "seed": 1, "accuracy": 0.6, "ci95": 0.1},
        {"width": 2, "seed": 2, "accuracy": None, "ci95": None},
    ]
    table = summary(rows, ["width", "seed"])
    assert f"| 1 | {percent(*mean_std([0.5, 0.7]))} | 2/2 |" in table
    assert f"| 2 | {percent(0.6, 0.0)} | 1/2 |" in table
    missing = summary(rows[3:], ["width", "seed"])
    assert "| 2 | missing | 0/1 |" in missing
