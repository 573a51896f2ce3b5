"""The ``fewmask`` command without the optional extras: torchvision is needed by no core command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "metaticket_glyphs.yaml"


@pytest.fixture
def without_torchvision(tmp_path) -> dict[str, str]:
    """An environment in which ``import torchvision`` fails, with only the plugin the example
    needs (as in the tox env without torchvision, where the timm plugin is not installed)."""
    (tmp_path / "torchvision.py").write_text("raise ImportError('torchvision is hidden here')\n")
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "FEWMASK_DISABLE_PLUGIN_AUTOLOAD": "1",
        "FEWMASK_LOAD_PLUGINS": "metaticket",
    }
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], env=env)
    assert probe.returncode != 0, "the stand-in must hide torchvision"
    return env


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--help"], "experiment"),
        (["plugins"], "metaticket"),
        (["validate", str(EXAMPLE)], "objective:"),
        (["experiment", "--help"], "mask-pictures"),
    ],
    ids=["help", "plugins", "validate", "experiment-help"],
)
def test_commands_run_without_torchvision(without_torchvision, args, expect):
    proc = subprocess.run(
        [sys.executable, "-m", "fewmask.cli", *args],
        env=without_torchvision,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_cli_imports_no_experiment_until_one_is_asked_for():
    code = (
        "import sys\n"
        "from fewmask.cli import build_parser\n"
        "build_parser().parse_args(['validate', 'x.yaml'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fewmask.experiments', "
        "'torchvision'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_an_unknown_experiment_is_named_with_the_choices(tmp_path, capsys):
    from fewmask.cli import main

    assert main(["experiment", "width-swep", str(EXAMPLE), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'width-sweep'?" in err and "mask-pictures" in err
