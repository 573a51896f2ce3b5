"""Fuzzing the command line with bad configs: exit 0 or 2, one message, no traceback, bounded time
and memory (issue 12's proof).

In-process, 1,000 Hypothesis examples per run: valid configs with 1-4 wrong values anywhere
(types, ranges, names, paths, devices, nested options) written as YAML or JSON, and malformed
files (deep nesting, alias bombs, foreign tags, dates, huge integers, bytes that are not UTF-8).
Each goes through ``fewmask validate``; about one in forty that only touches fields a tiny run
can afford also goes through ``fewmask train``. The bombs run once more in a child process under
an address-space limit (``RLIMIT_AS``), where an unbounded reader would die.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fewmask.cli import main

VALID = {
    "seed": 1,
    "dataset": {"name": "glyphs"},
    "sampler": {"name": "episodic", "options": {"ways": 3, "shots": 1}},
    "backbone": {"name": "omniglot_mlp", "options": {"hidden": [8, 8]}},
    "objective": {"name": "metaticket", "options": {"warmup": 0}},
    "inner": {"name": "sgd", "options": {"lr": 0.4, "steps": 1}},
    "train": {
        "iterations": 1,
        "meta_batch_size": 1,
        "val_episodes": 0,
        "test_episodes": 2,
        "progress": False,
        "checkpoint_every": 1,
    },
}
# fields a one-iteration run can afford whatever their value (no sizes, rates or data sources)
TRAINABLE = [
    ("seed",),
    ("train", "device"),
    ("train", "dtype"),
    ("train", "engine"),
    ("train", "threads"),
    ("objective", "name"),
    ("masker",),
    ("masker", "name"),
    ("masker", "options", "base"),
    ("dataset", "options", "set"),
    ("dataset", "options", "rotations"),
    ("train", "zz_unknown"),
    ("zz_unknown",),
]
ANYWHERE = [
    *TRAINABLE,
    ("run_dir",),
    ("train", "iterations"),
    ("train", "meta_batch_size"),
    ("train", "test_episodes"),
    ("backbone", "name"),
    ("backbone", "options"),
    ("backbone", "options", "hidden"),
    ("backbone", "options", "width"),
    ("backbone", "options", "channels"),
    ("backbone", "options", "depth"),
    ("sampler", "options", "ways"),
    ("sampler", "options", "shots"),
    ("sampler", "options", "queries"),
    ("inner", "name"),
    ("inner", "options", "lr"),
    ("inner", "options", "steps"),
    ("inner", "options", "rates"),
    ("objective", "options", "lr"),
    ("objective", "options"),
    ("dataset", "name"),
    ("dataset", "options", "split_file"),
    ("test_datasets",),
    ("sampler",),
]
NAMES = ["glyphs", "metaticket", "dense", "iterand", "sgd", "maml", "boil", "conv4", "nosuch", ""]
ODD_TEXT = ["", "\0", "\udced", "cuda:7", "meta", "potato", "/proc/self", "x" * 300, "1e9", "auto"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.5, 1e-9, 1e9, 1e308, 2**31, 2**31 - 1, 2**63]),
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT + NAMES),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(["name", "options", "base", "lr", "zz"]), scalars, max_size=3),
    st.sampled_from(NAMES).map(lambda n: {"name": n}),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(NAMES),
            "options": st.dictionaries(
                st.sampled_from(["lr", "steps", "base", "zz", "set"]), scalars, max_size=2
            ),
        }
    ),
)


def set_path(data: dict, path: tuple[str, ...], value: object) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


@st.composite
def bad_configs(draw) -> tuple[bytes, str, bool]:
    """(file bytes, suffix, whether a tiny train can afford it)."""
    trainable = draw(st.integers(0, 39)) == 0
    paths = st.sampled_from(TRAINABLE if trainable else ANYWHERE)
    data = copy.deepcopy(VALID)
    for path, value in draw(st.lists(st.tuples(paths, values), min_size=1, max_size=4)):
        set_path(data, path, value)
    as_json = draw(st.booleans())
    if not as_json:
        try:
            return yaml.safe_dump(data, allow_unicode=False).encode(), ".yaml", trainable
        except yaml.YAMLError:  # e.g. a lone surrogate: JSON spells it as an escape
            pass
    return json.dumps(data).encode(), ".json", trainable


@st.composite
def malformed_files(draw) -> tuple[bytes, str, bool]:
    kind = draw(st.sampled_from(["deep", "aliases", "tag", "date", "int", "bytes", "selfref"]))
    suffix = draw(st.sampled_from([".yaml", ".json", ".toml"]))
    if kind == "deep":
        depth = draw(st.integers(65, 3000))
        body = "[" * depth + "]" * depth
        text = {".yaml": f"seed: {body}\n", ".json": f'{{"seed": {body}}}'}.get(
            suffix, f"seed = {body}\n"
        )
    elif kind == "aliases":
        width, levels = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
        for i in range(1, levels):
            lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
        text, suffix = "\n".join(lines) + "\n", ".yaml"
    elif kind == "tag":
        tag = draw(
            st.sampled_from(
                [
                    "binary aGk=",
                    "set {a, b}",
                    "timestamp 2001-12-14",
                    "python/object:os.system {}",
                    "omap [{a: 1}]",
                    "pairs []",
                ]
            )
        )
        text, suffix = f"seed: !!{tag}\n", ".yaml"
    elif kind == "date":
        text = draw(st.sampled_from(["seed: 2001-12-14\n", "seed: 2001-12-14T21:59:43Z\n"]))
        suffix = ".yaml"
        if draw(st.booleans()):
            text, suffix = "seed = 1979-05-27T07:32:00Z\nrun_dir = 07:32:00\n", ".toml"
    elif kind == "int":
        digits = draw(st.integers(4301, 20_000))
        text = {".json": f'{{"seed": {"9" * digits}}}'}.get(suffix, f"seed: {'9' * digits}\n")
        suffix = ".json" if suffix == ".json" else ".yaml"
    elif kind == "selfref":
        text, suffix = draw(st.sampled_from(["a: &x [1, *x]\n", "&x {a: *x}\n"])), ".yaml"
    else:
        raw = draw(st.binary(min_size=1, max_size=40))
        return b"seed: 1\n# " + raw + b"\xff\n", suffix, False
    return text.encode(), suffix, False


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(args: list[str]) -> tuple[int, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, err.getvalue(), time.perf_counter() - start


@settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=st.one_of(bad_configs(), bad_configs(), bad_configs(), malformed_files()))
def test_bad_configs_exit_0_or_2_without_a_traceback(tmp_path_factory, case):
    content, suffix, trainable = case
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    path = folder / f"config{suffix}"
    path.write_bytes(content)
    with working_directory(folder):  # a relative run_dir lands here
        status, err, seconds = run_cli(["validate", str(path)])
        assert status in (0, 2), err
        assert "Traceback" not in err and (status == 0 or err.startswith("fewmask: ")), err
        assert seconds < 10, f"validate took {seconds:.1f} s"
        event(f"validate exit {status}" + (" + train" if trainable else ""))
        if trainable:
            args = ["train", str(path), "--run-dir", str(folder / "run"), "--force"]
            trained, err, seconds = run_cli(args)
            assert trained == status, err  # validate said what train says
            assert "Traceback" not in err and seconds < 60, err


BOMBS = {
    "laughs.yaml": "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"{n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdefgh", "bcdefghi")
    ),
    "deep.yaml": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep.json": '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "deep.toml": "a = " + "[" * 100_000 + "]" * 100_000 + "\n",
    "int.yaml": "seed: " + "9" * 500_000 + "\n",
    "large.yaml": "# " + "x" * (50 << 20) + "\n",
}
CHILD = """
import json, resource, sys, time
from pathlib import Path
from fewmask.cli import main

def vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

main(["validate", sys.argv[1]])  # load everything first (torch, plugins, the registry)
limit = vm_size() + (512 << 20)  # then at most 512 MiB more address space
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
results = {}
for item in sys.argv[2:]:
    start = time.perf_counter()
    args = json.loads(item)
    results[" ".join(args)] = (main(args), time.perf_counter() - start)
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_bombs_stay_within_a_memory_limit_in_a_child_process(tmp_path):
    valid = tmp_path / "valid.yaml"
    valid.write_text(yaml.safe_dump({**VALID, "run_dir": str(tmp_path / "run")}))
    commands = []
    for name, text in BOMBS.items():
        (tmp_path / name).write_text(text)
        commands.append(["validate", str(tmp_path / name)])
    # sizes that validate but cannot fit: refused from the estimate, before allocation
    big = ["train", str(valid), "-o", "backbone.options.hidden=[2000000]"]
    commands.append(big)
    # a meta-batch whose episodes in the run's dtype cannot fit (issue 22, item 11)
    huge = ["-o", "train.meta_batch_size=10000", "-o", "sampler.options.queries=15"]
    commands.append(["train", str(valid), *huge, "--force"])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(valid), *map(json.dumps, commands)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line.removeprefix("RESULTS "))
    for command, (status, seconds) in results.items():
        assert status == 2, f"{command}: exit {status}\n{proc.stderr[-2000:]}"
        assert seconds < 30, f"{command}: {seconds:.1f} s"
    assert "the run needs at least" in proc.stderr


# ----------------------------------------------------------------------------- issue 22
# The command line (-o on train, test, --resume), the run folder (planted links, foreign and
# read-only files, a FIFO, a folder in a file's place, a corrupt checkpoint, a full disk) and
# numeric extremes, in one child process (torch is imported once) under an address-space and a
# file-size limit. Every case starts from a fresh copy of one tiny finished run.

EXTREMES = ["1.0e39", "-1.0e39", "3.0e38", "1.0e308", "1e-320", ".nan", ".inf", "-.inf", "0", "-1"]
HUGE = [str(2**63), str(10**40), "1000000000", "1.5", "x", "[]", "{a: 1}", "null"]
# fields whose every value ends quickly: refused by a bound, or a run of at most a few steps
NUMERIC_TRAIN = [
    "objective.options.lr",
    "inner.options.lr",
    "train.meta_batch_size",
    "sampler.options.ways",
    "sampler.options.shots",
    "sampler.options.queries",
    "inner.options.steps",
    "seed",
    "backbone.options.hidden",
    "train.checkpoint_every",
]
RESUME_FIELDS = [
    "train.iterations",
    "train.checkpoint_every",
    "objective.options.lr",
    "seed",
    "run_dir",  # a run stays in its folder
]
TEST_FIELDS = [
    "seed",
    "train.device",
    "objective.options.lr",
    "dataset.options.set",
    "sampler.options.ways",  # another model's shape
]
RUN_FILES = ["run.lock", "metrics.jsonl", "config.yaml", "results.json", "resumes.jsonl"]
PLANTS = ["symlink", "hardlink", "fifo", "folder", "foreign", "readonly", "corrupt"]


def command_cases(seed: int = 22, count: int = 24) -> list[dict]:
    """``count`` cases: ``{"plant": [kind, name] | None, "fsize": bytes | None, "args": [...]}``
    (``RUN`` and ``CONFIG`` in ``args`` stand for the run folder and the config file). Three in
    four plant something, mostly with valid overrides so that the command gets to writing."""
    import random

    draw = random.Random(seed)
    links = [[kind, name] for kind in ("symlink", "hardlink") for name in RUN_FILES]
    others = [[kind, name] for kind in PLANTS[2:] for name in RUN_FILES]
    draw.shuffle(links)
    draw.shuffle(others)
    plants = iter(links + others)  # every link first: the attack of issue 22
    cases = []
    for i in range(count):
        command = ("train", "resume", "test")[i % 3]
        fsize = draw.choice([4_000, 30_000, 300_000]) if draw.random() < 0.25 else None
        plant = next(plants) if i % 4 != 3 and fsize is None else None
        if command == "train":
            args, fields = ["train", "CONFIG", "--run-dir", "RUN", "--force"], NUMERIC_TRAIN
        elif command == "resume":
            args, fields = ["train", "--resume", "RUN"], RESUME_FIELDS
            if plant or fsize:  # train on, so that every file of a resume is written
                args += ["-o", "train.iterations=3"]
        else:
            args, fields = ["test", "RUN"], TEST_FIELDS
        mutated = draw.randint(1, 2) if plant is None else int(draw.random() < 0.3)
        mutated = 0 if fsize else mutated  # a full disk: a valid command that gets to writing
        for field in draw.sample(fields, mutated):
            value = draw.choice(EXTREMES + HUGE + ["cuda:7", "heldout", "3"])
            if field == "backbone.options.hidden":
                value = f"[{value}]"
            if field == "train.iterations":  # up to 10**9 is allowed: only what ends fast
                value = draw.choice(["3", "0", "-1", "1.5", str(2**63), "1.0e39", ".nan", "x"])
            args += ["-o", f"{field}={value}"]
        cases.append({"plant": plant, "fsize": fsize, "args": args})
    return cases


COMMANDS_CHILD = r"""
import contextlib, hashlib, io, json, os, resource, shutil, stat, sys
from pathlib import Path
from fewmask.cli import main
from fewmask.runtime.folder import RunFolder

work, config = Path(sys.argv[1]), sys.argv[2]
cases = json.loads(Path(sys.argv[3]).read_text())
notes = work / "notes.txt"
base = work / "base"

def run(args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(args)
    return status, err.getvalue()

def vm_size():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

def snapshot(root, run):
    # every file, link and folder under root but those the run folder names as its own
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if run.owns(path):
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                seen[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                seen[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                seen[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return seen

def plant(kind, target):
    target.unlink(missing_ok=True)
    if kind == "symlink":
        target.symlink_to(notes)
    elif kind == "hardlink":
        os.link(notes, target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    elif kind == "foreign":
        (target.parent / "notes.md").write_text("| mine |")
        (target.parent / "test-mine.txt").write_text("mine")
    elif kind == "readonly":
        target.write_text("mine")
        target.chmod(0o444)
    elif kind == "corrupt":
        ckpt = target.parent / "checkpoint.pt"
        ckpt.write_bytes(ckpt.read_bytes()[: 1000])

assert run(["train", config, "--run-dir", str(base)])[0] == 0
soft_as, hard_as = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (1 << 30), hard_as))
_, hard_fsize = resource.getrlimit(resource.RLIMIT_FSIZE)
results = []
for i, case in enumerate(cases):
    folder = work / f"case{i}"
    shutil.copytree(base, folder)
    notes.write_text("precious\n")
    if case["plant"]:
        plant(case["plant"][0], folder / case["plant"][1])
    args = [{"RUN": str(folder), "CONFIG": config}.get(a, a) for a in case["args"]]
    runfolder = RunFolder(folder)
    before = snapshot(work, runfolder)
    resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"] or (64 << 20), hard_fsize))
    try:
        status, err = run(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard_fsize, hard_fsize))
    after = snapshot(work, runfolder)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    results.append({"args": args, "plant": case["plant"], "fsize": case["fsize"],
                    "status": status, "err": err[-1500:], "changed": changed})
    for path in folder.rglob("*"):  # let the next copy be removed later
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_command_line_and_run_folder_mutations_within_limits(tmp_path, tiny_run):
    config = tmp_path / "c.yaml"
    config.write_text(tiny_run(2, test_episodes=2))
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps(command_cases()))
    proc = subprocess.run(
        [sys.executable, "-c", COMMANDS_CHILD, str(tmp_path), str(config), str(cases)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    seen = set()
    for case in json.loads(line.removeprefix("RESULTS ")):
        where = json.dumps({k: case[k] for k in ("args", "plant", "fsize", "err")}, indent=1)
        assert case["status"] in (0, 1, 2), where
        assert "Traceback" not in case["err"] and "internal error" not in case["err"], where
        said = [x for x in case["err"].splitlines() if x.startswith("fewmask: ")]
        assert case["status"] == 0 or any("warning" not in x for x in said), where
        assert not case["changed"], f"changed what is not fewmask's: {case['changed']}\n{where}"
        seen.add(case["status"])
    assert seen == {0, 1, 2}  # the cases reach success, runtime failures and refusals
