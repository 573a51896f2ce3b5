"""Config files and values are read within bounds; everything train refuses, validate refuses first.

Each case is a ConfigError naming the place and the fix, and the CLI exits 2 without a traceback.
"""

from __future__ import annotations

import time

import pytest

from fewmask.cli import main
from fewmask.config import parse_value, read_config_file
from fewmask.config.files import MAX_BYTES, MAX_DEPTH, MAX_NODES
from fewmask.errors import ConfigError

TINY = """\
seed: 1
dataset: {name: glyphs}
sampler: {name: episodic, options: {ways: 3, shots: 1}}
backbone: {name: omniglot_mlp, options: {hidden: [8, 8]}}
objective: {name: metaticket}
inner: {name: sgd, options: {lr: 0.4, steps: 1}}
train: {iterations: 2, meta_batch_size: 1, val_episodes: 0, test_episodes: 3, progress: false}
"""


def billion_laughs() -> str:
    """The classic alias bomb: 9 levels of 9 references, 9**9 strings once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BAD_FILES = {  # name: (file contents, part of the message)
    "bomb.yaml": (billion_laughs(), "aliases expand to more than"),
    "latin1.yaml": (b"seed: 1\n# caf\xe9\n", "not UTF-8 text (byte 0xe9 at line 2)"),
    "deep.yaml": ("a: " + "[" * 5000 + "]" * 5000 + "\n", f"nested more than {MAX_DEPTH}"),
    "deep.json": ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", f"nested more than {MAX_DEPTH}"),
    "deep.toml": ("a = " + "[" * 5000 + "]" * 5000 + "\n", f"nested more than {MAX_DEPTH}"),
    "dotted.toml": (".".join(f"k{i}" for i in range(200)) + " = 1\n", "nested more than"),
    "bigint.yaml": ("seed: " + "9" * 5000 + "\n", "an integer of 5,000 digits"),
    "bigint.json": ('{"seed": ' + "9" * 5000 + "}", "an integer of 5,000 digits"),
    "bigint.toml": ("seed = " + "9" * 5000 + "\n", "cannot parse"),
    "date.yaml": ("seed: 2001-12-14\n", "$.seed: a date is not a config value; quote it"),
    "date.toml": ("seed = 1979-05-27T07:32:00Z\n", "$.seed: a date and time is not"),
    "binary.yaml": ("seed: !!binary aGVsbG8=\n", "the YAML tag !!binary is not allowed"),
    "set.yaml": ("seed: !!set {a, b}\n", "the YAML tag !!set is not allowed"),
    "python.yaml": ("seed: !!python/object:os.system {}\n", "is not allowed"),
    "selfref.yaml": ("a: &x [1, *x]\n", "the alias *x refers to itself"),
    "selfmap.yaml": ("&x {a: *x}\n", "refers to itself"),
    "boolkey.yaml": ("on: 1\n", "the key True is not a string"),
    "big.yaml": ("# " + "x" * (MAX_BYTES + 10) + "\n", "larger than"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_files_are_refused_quickly_with_the_place(name, tmp_path, capsys):
    text, message = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        read_config_file(path)
    assert time.perf_counter() - start < 5
    assert message in str(info.value)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_alias_bound_counts_expanded_values_not_text(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("base: &b {lr: 0.4, steps: 1}\ninner: {name: sgd, options: *b}\n" + TINY[8:])
    assert read_config_file(ok)["inner"]["options"] == {"lr": 0.4, "steps": 1}
    wide = tmp_path / "wide.yaml"
    wide.write_text(
        "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 200) + "]\n"
    )
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES:,} values"):
        read_config_file(wide)


def test_missing_directory_and_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        read_config_file(tmp_path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file("bad\0name.yaml")


@pytest.mark.parametrize(
    "value, message",
    [
        ("[" * 100 + "]" * 100, "nested more than"),
        ("2001-01-01", "a date is not a config value"),
        ("!!binary aGk=", "!!binary is not allowed"),
        ("9" * 5000, "an integer of 5,000 digits"),
        ("[1", "not valid YAML"),
        ("x" * 200_000, "characters is too long"),
    ],
)
def test_override_values_have_the_same_bounds(value, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        parse_value(value)
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    assert main(["validate", str(path), "-o", f"seed={value}"]) == 2
    err = capsys.readouterr().err
    assert "-o 'seed=" in err and "Traceback" not in err


VALIDATE_REFUSES = {  # -o override: part of the problem line (item 8 of issue 12)
    "run_dir=''": "$.run_dir: must name a folder",
    'run_dir="a\\0b"': "$.run_dir: contains a NUL character",
    'run_dir="\\udced"': "$.run_dir: '\\udced' is not valid text (a lone surrogate)",
    "run_dir=/proc/self": "inside the system folder /proc",
    "run_dir=" + "x" * 300: "$.run_dir: is too long",
    "train.device=potato": "'potato' is not a torch device",
    "train.device=meta": "'meta' holds no data",
    "train.device=cuda:7": "$.train.device: 'cuda:7'",
    "sampler.options.ways=2147483647": "$.sampler.options.ways: must be <= 10000",
    "inner.options.steps=2147483648": "$.inner.options.steps: must be <= 10000",
    "train.meta_batch_size=100000000": "$.train.meta_batch_size: must be <= 10000",
    "train.threads=1180591620717411303424": "$.train.threads: expected auto or an integer from",
    "seed=18446744073709551616": "$.seed: must be <= 4294967295",
    "backbone.options.hidden=[0,-5]": "$.backbone.options.hidden: sizes must be positive",
    "backbone.options.width=1e-9": "$.backbone.options.width: 1e-09 leaves the hidden layer",
    "backbone.options.width=1e9": "$.backbone.options.width: the backbone would have",
    "masker.name=dense": "$.masker.name: objective 'metaticket' meta-learns mask scores",
    "dataset={name: glyphs, options: {set: heldout}}": "no 'train' split to meta-train on",
    "inner={name: per_layer, options: {rates: {'a*': -1.0, b: .nan}}}": "finite number >= 0",
    "masker={name: iterand, options: {base: {name: nosuch}}}": "$.masker.options.base.name",
}


@pytest.mark.parametrize("override", sorted(VALIDATE_REFUSES))
def test_validate_refuses_what_train_would(override, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # cuda:7 is out of range anyway
    path = tmp_path / "c.yaml"
    path.write_text(TINY + f"run_dir: {tmp_path / 'run'}\n")
    assert main(["validate", str(path), "-o", override]) == 2
    err = capsys.readouterr().err
    assert VALIDATE_REFUSES[override] in err and "Traceback" not in err
    assert main(["train", str(path), "-o", override]) == 2  # train refuses the same, first
    assert not (tmp_path / "run").exists()


def test_run_dir_that_is_a_file_or_under_a_file_or_not_writable(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for run_dir, message in [
        (afile, "is a file, not a folder"),
        (afile / "sub", f"cannot be created: {str(afile)!r} is a file"),
    ]:
        assert main(["validate", str(path), "-o", f"run_dir={run_dir}"]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # root writes anywhere; pretend
    assert main(["validate", str(path), "-o", f"run_dir={tmp_path / 'ro'}"]) == 2
    assert "is not writable by you: give write permission" in capsys.readouterr().err
    assert afile.read_text() == "mine"


def test_run_dir_flag_keeps_the_path_verbatim(tmp_path, capsys):
    """--run-dir is a path, never YAML: '#', ': ' and quotes stay in it."""
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    odd = tmp_path / "a #1: 'x'"
    assert main(["train", str(path), "--run-dir", str(odd)]) == 0
    assert (odd / "results.json").is_file()
    capsys.readouterr()


def test_inner_lr_zero_trains(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    for engine in ("exact", "fast"):
        args = ["train", str(path), "--run-dir", str(tmp_path / engine)]
        assert main([*args, "-o", "inner.options.lr=0.0", "-o", f"train.engine={engine}"]) == 0
    assert "accuracy" in capsys.readouterr().out
