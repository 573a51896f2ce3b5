"""The ray launcher on a local 2-CPU cluster (started and stopped by the command): the runs of
`serial`; options checked before anything starts; the install hint without Ray."""

from __future__ import annotations

import sys

import pytest
from fewmask_plugin_ray import RayLauncher

import fewmask
from fewmask.testing import assert_launcher_matches_serial


def test_a_local_ray_cluster_gives_the_runs_of_serial(tmp_path):
    assert_launcher_matches_serial(tmp_path, "--launcher", "ray", "-l", "local_cpus=2")


def test_bad_options_are_config_errors():
    """What `--launcher ray -l ...` builds before anything starts (exit 2)."""
    with pytest.raises(fewmask.ConfigError) as caught:
        fewmask.create("launcher", "ray", {"num_cpus": 0})
    assert caught.value.exit_code == 2 and "$.launcher.options.num_cpus" in str(caught.value)


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(fewmask.ConfigError, match="pip install ray") as caught:
        RayLauncher(RayLauncher.config_class())
    assert caught.value.exit_code == 2
