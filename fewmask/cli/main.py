"""The ``fewmask`` command: plugins, options, validate, train, test, export, adapt, experiment,
sweep.

Exit status: 0 success, 2 bad input (configuration, usage, a missing or malformed dataset, a run
folder in use or unusable, a run too large for the device), 1 a failure at run time (checkpoint,
plugin, non-finite values, the operating system). Errors are one clear message naming the path
and the fix, never a traceback; ``--debug`` (anywhere on the line) or ``FEWMASK_DEBUG=1`` adds
it (:mod:`fewmask.cli.errors`).

``train`` and ``test`` also run under ``torchrun`` (see docs/distributed.md): every rank trains,
rank 0 alone prints and writes the run directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fewmask.cli import commands
from fewmask.cli.errors import report, shown_warnings, thread_failures_reported
from fewmask.runtime import distributed
from fewmask.runtime.lock import release_all


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description may be computed only when its help is shown."""

    def __init__(self, *args: Any, describe: Callable[[], str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.describe = describe

    def format_help(self) -> str:
        if self.describe is not None:
            self.description = self.describe()
        return super().format_help()


def _describe_experiments() -> str:
    from fewmask.experiments import EXPERIMENTS  # imported for `experiment --help` alone

    return "Experiments: " + "; ".join(f"{i.name}: {i.description}" for i in EXPERIMENTS.values())


MAIN_EPILOG = """\
examples:
  fewmask train examples/metaticket_glyphs.yaml     Meta-ticket on the built-in glyph set (CPU)
  fewmask train examples/glyphs/maml.yaml -o train.iterations=100
  fewmask validate my_config.yaml                   check a config; print it with every default
  fewmask options train                             every field of a section, with its meaning
  fewmask plugins backbone                          the backbones installed, and who provides them

Configs to start from: examples/ in the source checkout (glyphs/: every method on the built-in
glyph set; paper/: the paper's experiments). Every config field: `fewmask options`
(docs/config.md). `fewmask COMMAND --help` for one command.
"""

TRAIN_EPILOG = """\
examples:
  fewmask train examples/metaticket_glyphs.yaml
  fewmask train examples/glyphs/maml.yaml -o train.iterations=100 -o sampler.options.shots=5
  fewmask train examples/glyphs/metaticket.yaml --run-dir runs/try1 --force
  fewmask train --resume runs/try1 -o train.iterations=8000     continue a run further

Configs to start from: examples/ in the source checkout (glyphs/, paper/). What each -o key
means: `fewmask options` (or `fewmask options train`, `fewmask options masker.metaticket`).
"""


def build_parser() -> argparse.ArgumentParser:
    from fewmask.version import __version__

    parser = _Parser(
        prog="fewmask",
        description="Meta-learn sparse subnetworks (Meta-ticket) and MAML baselines.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fewmask {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on failure, print the traceback too (accepted anywhere; or FEWMASK_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered component and its provider")
    p.add_argument(
        "kind",
        nargs="?",
        metavar="KIND",
        help="only this kind: backbone, masker, inner (inner_optimizer), objective, sampler, "
        "dataset, launcher",
    )
    p.add_argument(
        "--filter",
        metavar="PATTERN",
        help="only names matching PATTERN (shell-style, e.g. 'meta*'; plain text: a substring)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=commands.cmd_plugins)

    p = sub.add_parser("options", help="every config field of every component, as markdown")
    p.add_argument(
        "topic",
        nargs="?",
        metavar="KIND[.NAME]",
        help="only one kind's components (masker), one component (masker.iterand), or the "
        "experiment or train section",
    )
    p.set_defaults(func=commands.cmd_options)

    override = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a config value, e.g. -o train.iterations=100 (repeatable)",
    }
    p = sub.add_parser("validate", help="check a config and print it with every default filled in")
    p.add_argument("config", help="YAML, TOML or JSON config file")
    p.add_argument("-o", "--override", **override)
    p.set_defaults(func=commands.cmd_validate)

    p = sub.add_parser(
        "train",
        help="meta-train, then meta-test the final model",
        description="Meta-train, then meta-test the final model.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML, TOML or JSON config file")
    p.add_argument("-o", "--override", **override)
    p.add_argument("--run-dir", help="where to write the run (overrides run_dir)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with the config its checkpoint holds (and any -o)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing run in run_dir")
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("test", help="meta-test the checkpoint of a run, or an export of it")
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder, or its packed or safetensors export"
    )
    p.add_argument("--episodes", type=int, help="number of test episodes (default: the run's)")
    p.add_argument("--seed", type=int, help="episode seed (default: the run's)")
    p.add_argument("--dataset", help="meta-test on this dataset's test split (cross-domain)")
    p.add_argument("--root", help="root folder of --dataset (sets its `root` option)")
    p.add_argument(
        "--dataset-options",
        metavar="YAML",
        help="options of --dataset as a YAML mapping, e.g. '{set: heldout}'",
    )
    p.add_argument("-o", "--override", **override)
    p.set_defaults(func=commands.cmd_test)

    p = sub.add_parser("export", help="write a run's subnetwork: packed, safetensors or onnx")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--format", choices=("packed", "safetensors", "onnx"), default="packed")
    p.add_argument("--out", metavar="FILE", help="default: RUN/export.{fmpack,safetensors,onnx}")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("adapt", help="adapt a run or export to your own labelled images")
    p.add_argument(
        "model", metavar="MODEL", help="a run folder, or its packed or safetensors export"
    )
    p.add_argument("--support", required=True, metavar="DIR", help="DIR/<class>/*.png|jpg")
    p.add_argument(
        "--query", metavar="DIR", help="images to classify (labelled like --support, or not)"
    )
    p.add_argument("--out", metavar="FILE", help="save the adapted network (.safetensors or .onnx)")
    p.add_argument("--predictions", metavar="CSV", help="default with --query: predictions.csv")
    p.add_argument(
        "--rebuild-head",
        action="store_true",
        help="a fresh head of as many outputs as classes (default: the run's head, same ways)",
    )
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=commands.cmd_adapt)

    p = sub.add_parser(
        "experiment",
        help="run one of the paper's experiments over a base config",
        describe=_describe_experiments,  # the experiments (and their imports) load on use only
    )
    p.add_argument("name", metavar="NAME", help="experiment to run (see --help)")
    p.add_argument("config", help="the base run config (YAML, TOML or JSON)")
    p.add_argument("-o", "--override", **override)
    p.add_argument(
        "-x",
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an experiment setting, e.g. -x widths=[1,2] (see docs/experiments.md)",
    )
    p.add_argument("--out", help="output folder (default: runs/experiments/NAME)")
    p.add_argument(
        "--force",
        action="store_true",
        help="start over: remove what fewmask wrote in the output folder (nothing else)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _launch_arguments(p)
    p.set_defaults(func=commands.cmd_experiment)

    p = sub.add_parser(
        "sweep",
        help="a grid over any config keys; a results table with mean +- std over seeds",
    )
    p.add_argument("config", help="the base run config (YAML, TOML or JSON)")
    p.add_argument("-o", "--override", **override)
    p.add_argument(
        "-x",
        "--axis",
        action="append",
        default=[],
        metavar="KEY=[A,B]",
        help="a config key and its values, e.g. -x backbone.options.width=[1,2] -x seed=[1,2,3] "
        "(repeatable: the grid is every combination)",
    )
    p.add_argument("--out", help="output folder (default: runs/sweeps/<config file's stem>)")
    p.add_argument("--force", action="store_true", help="start over (only what fewmask wrote)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _launch_arguments(p)
    p.set_defaults(func=commands.cmd_sweep)
    return parser


def _launch_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher``, ``-l`` and ``--workers``, ``--collect``: how the runs are run."""
    p.add_argument(
        "--launcher",
        default="serial",
        metavar="NAME",
        help="what runs the runs: serial (default, one after another here), local (a process "
        "pool), submitit, ray, ... (`fewmask plugins launcher`)",
    )
    p.add_argument(
        "-l",
        "--launcher-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a launcher option, e.g. -l partition=gpu (`fewmask options launcher.NAME`)",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="runs at once (-l workers=N; local launcher)"
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: gather the runs that finished into the tables (the rest: missing)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _ignore_file_size_signal()
    debug = "--debug" in argv or os.environ.get("FEWMASK_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        with shown_warnings(), thread_failures_reported(debug):
            return args.func(args)
    except KeyboardInterrupt:
        print("fewmask: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # one message and an exit status (fewmask.cli.errors)
        return report(exc, debug)
    finally:
        release_all()  # the run folders this command locked
        distributed.destroy()  # under torchrun; a no-op otherwise


def _ignore_file_size_signal() -> None:
    """Past a file-size limit (``ulimit -f``) a write fails with EFBIG, which names the file,
    instead of SIGXFSZ killing the process (Python's own start-up does this too; an embedding
    program may not)."""
    import signal
    import threading

    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
