"""The small frictions of a first trial (issue 25), each checked where a user meets it.

Validation accuracy on the terminal, a TensorBoard hint that runs as typed, step-0 histograms
and pictures of every masked layer, seconds per iteration, maskers' own scalars, help texts with
examples, one message for a missing config file, install hints that name what brings a plugin,
and a plugin walkthrough that installs the pytest it runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fewmask import ConfigError, Masker, TrainConfig, Trainer, create
from fewmask.cli import build_parser, main
from fewmask.cli.main import MAIN_EPILOG, TRAIN_EPILOG
from fewmask.registry.known import OUTSIDE_PLUGINS_EXTRA, PROVIDERS
from fewmask.session import load_registry
from fewmask.testing import make_dataset
from fewmask.training.loggers import tensorboard_command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).parents[1]
LAYERS = ["features.1.linear.weight", "features.2.linear.weight"]


def trainer(masker="metaticket", run_dir=None, **train) -> Trainer:
    objective = "maml" if masker == "dense" or isinstance(masker, Masker) else "metaticket"
    settings = {"iterations": 3, "val_episodes": 0, "test_episodes": 2, "progress": False}
    masker = masker if isinstance(masker, Masker) else create("masker", masker)
    return Trainer(
        create(
            "backbone", "omniglot_mlp", {"hidden": [8, 6]}, input_shape=(1, 28, 28), num_classes=5
        ),
        masker,
        create("inner", "sgd"),
        create("objective", objective),
        create("sampler", "episodic", {"ways": 5, "shots": 1, "queries": 1}),
        {"train": make_dataset(), "val": make_dataset(seed=2), "test": make_dataset(seed=1)},
        TrainConfig(**settings | train),
        run_dir=run_dir,
    )


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["tag"], []).append((row["step"], row["value"]))
    return found


# ---------------------------------------------------------------- the terminal
def test_validation_accuracy_reaches_the_terminal_with_its_interval(capsys):
    trainer("dense", iterations=4, val_every=2, val_episodes=3, progress=True).fit()
    lines = [x for x in re.split(r"[\r\n]", capsys.readouterr().err) if "validation" in x]
    assert [x.split(":")[0] for x in lines] == [
        "validation at iteration 2 (every 2)",
        "validation at iteration 4 (every 2)",
    ]
    assert all(re.search(r": \d+\.\d\d \+- \d+\.\d\d % \(3 episodes\)", x) for x in lines)


def test_no_validation_lines_without_progress_output(capsys):
    trainer("dense", iterations=2, val_every=1, val_episodes=2, progress=False).fit()
    assert "validation" not in capsys.readouterr().err


def fake_python(folder: Path, tensorboard: bool) -> Path:
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text("")
    if tensorboard:
        (bin_dir / "tensorboard").write_text("")
    return python


def test_tensorboard_hint_names_the_venvs_executable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # the venv is not activated
    monkeypatch.setattr(sys, "executable", str(fake_python(tmp_path, tensorboard=True)))
    assert tensorboard_command("runs") == ".venv/bin/tensorboard --logdir runs"
    monkeypatch.chdir(tmp_path / ".venv")
    assert tensorboard_command("my runs") == "bin/tensorboard --logdir 'my runs'"
    monkeypatch.chdir(ROOT)
    assert tensorboard_command("runs") == f"{tmp_path}/.venv/bin/tensorboard --logdir runs"


def test_tensorboard_hint_is_plain_when_that_one_is_on_path(tmp_path, monkeypatch):
    python = fake_python(tmp_path, tensorboard=True)
    (python.parent / "tensorboard").chmod(0o755)
    monkeypatch.setenv("PATH", str(python.parent))  # activated
    monkeypatch.setattr(sys, "executable", str(python))
    assert tensorboard_command("runs") == "tensorboard --logdir runs"


def test_tensorboard_hint_without_an_executable_uses_the_module(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    python = fake_python(tmp_path, tensorboard=False)
    monkeypatch.setattr(sys, "executable", str(python))
    assert tensorboard_command("runs") == f"{python} -m tensorboard.main --logdir runs"


def test_the_printed_tensorboard_hint_runs_as_typed(tmp_path, capsys, monkeypatch):
    """`fewmask train` prints the hint; its program runs with this test's PATH, on which the
    venv need not be."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(
        "dataset: {name: glyphs}\nbackbone: {name: omniglot_mlp, options: {hidden: [8]}}\n"
        "train: {iterations: 1, val_episodes: 0, test_episodes: 1, progress: false}\n"
    )
    assert main(["train", str(config), "--run-dir", "runs/x"]) == 0
    (hint,) = re.findall(r"TensorBoard: (.*)", capsys.readouterr().out)
    words = shlex.split(hint)
    assert words[-2:] == ["--logdir", "runs"]
    shown = subprocess.run(
        [*words[:-2], "--version_tb"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip()


# ---------------------------------------------------------------- TensorBoard contents
def test_step_zero_histograms_every_masked_layer_and_seconds_per_iteration(tmp_path):
    trainer(run_dir=tmp_path / "run", iterations=3, mask_image_every=2, log_every=1).fit()
    run = events(tmp_path / "run")
    for layer in LAYERS:
        assert [h.step for h in run.Histograms(f"scores/{layer}")] == [0, 3]
        assert [i.step for i in run.Images(f"masks/{layer}")] == [0, 2, 3]
    found = scalars(tmp_path / "run")
    assert [step for step, _ in found["sparsity/overall"]] == [0, 1, 2, 3]
    seconds = run.Scalars("time/seconds_per_iteration")
    assert [s.step for s in seconds] == [1, 2, 3] and all(s.value > 0 for s in seconds)
    assert not any(tag.startswith("time/") for tag in found)  # metrics.jsonl stays exact


def test_a_chosen_list_of_masked_layers_is_drawn(tmp_path):
    trainer(run_dir=tmp_path / "run", iterations=1, mask_image_layers=(LAYERS[1],)).fit()
    images = events(tmp_path / "run").Tags()["images"]
    assert images == [f"masks/{LAYERS[1]}"]


def test_an_unmasked_layer_in_the_list_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\$.train.mask_image_layers: classifier.weight not"):
        trainer(mask_image_layers=("classifier.weight",))
    with pytest.raises(ConfigError, match=r"masked: none \(the masker masks nothing\)"):
        trainer("dense", mask_image_layers=(LAYERS[0],))


def test_a_resumed_run_logs_no_second_step_zero(tmp_path):
    first = trainer(run_dir=tmp_path / "run", iterations=2)
    first.fit()
    again = trainer(run_dir=tmp_path / "run", iterations=3)
    again.resume()
    again.fit()
    steps = [h.step for h in events(tmp_path / "run").Histograms(f"scores/{LAYERS[0]}")]
    assert steps.count(0) == 1


class CountingMasker(Masker):
    """A dense masker that reports how often it was stepped."""

    def __init__(self):
        super().__init__()
        self.steps = torch.zeros((), dtype=torch.int64)

    def attach(self, backbone):
        pass

    def masks(self):
        return {}

    def on_outer_step(self, iteration, backbone):
        self.steps = self.steps + 1  # a tensor: read only when logged

    def log_scalars(self):
        return {"steps": self.steps}


def test_a_maskers_own_scalars_are_logged(tmp_path):
    trainer(CountingMasker(), run_dir=tmp_path / "run", iterations=3, log_every=1).fit()
    assert scalars(tmp_path / "run")["masker/steps"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert "masker/steps" in events(tmp_path / "run").Tags()["scalars"]


def test_maskers_log_no_scalars_by_default():
    assert create("masker", "dense").log_scalars() == {}


# ---------------------------------------------------------------- the command line
def test_help_texts_give_examples_and_pointers(capsys):
    for argv in (["--help"], ["train", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "examples:\n  fewmask train examples/" in text
        assert "`fewmask options`" in text and "examples/ in the source checkout" in text


@pytest.mark.parametrize(
    "line",
    [x.strip() for x in (MAIN_EPILOG + TRAIN_EPILOG).splitlines() if x.strip().startswith("fe")],
)
def test_every_help_example_is_a_valid_command(line):
    command = re.split(r"\s{3,}", line)[0]  # without its comment
    args = build_parser().parse_args(shlex.split(command)[1:])
    for path in [getattr(args, "config", None)]:
        if path and path.startswith("examples/"):
            assert (ROOT / path).is_file(), path


def test_a_missing_config_file_gives_one_message(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("problem(s)") == 1 and err.count("does not exist") == 1
    assert "cannot read" not in err
    assert f"config file '{missing}' does not exist" in err


# ---------------------------------------------------------------- install hints and docs
def test_install_hints_name_what_brings_the_plugin(monkeypatch):
    registry = load_registry(autoload=False, only=(), blocked=())

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for (kind, name), distribution in PROVIDERS.items():
        message = registry.unknown_message(kind, name)
        assert f"pip install {distribution}" in message
        for extra in re.findall(r"'fewmask\[(\w+)\]'", message):
            named = extras[extra] if extra != "all" else extras["all"] + extras["plugins"]
            if "does not include it" in message and extra == "plugins":
                assert not any(r.startswith(distribution) for r in named), message
            else:
                assert any(r.startswith(distribution) for r in named), (extra, message)
    timm = registry.unknown_message("backbone", "timm")
    assert "'fewmask[all]' does" in timm and "brings timm" in timm
    assert set(OUTSIDE_PLUGINS_EXTRA) <= set(PROVIDERS.values())


def test_the_plugin_walkthrough_installs_the_pytest_it_runs():
    text = (ROOT / "docs" / "writing-plugins.md").read_text()
    section = text.split("## 8.")[1].split("\n## ")[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    runs = [i for i, c in enumerate(commands) if "pytest" in c and "install" not in c]
    installs = [i for i, c in enumerate(commands) if re.match(r"pip install .*pytest", c)]
    assert runs and installs and installs[0] < runs[0]
    assert all(commands[i].startswith("python -m pytest") for i in runs)
