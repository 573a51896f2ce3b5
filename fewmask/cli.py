"""The ``fewmask`` command: plugins, validate, train, test, export, adapt.

Exit status: 0 success, 2 bad input (configuration, usage, a missing or malformed dataset, a run
folder in use or unusable, a run too large for the device), 1 a failure at run time (checkpoint,
plugin, non-finite values, the operating system). Errors are one clear message naming the path
and the fix, never a traceback; ``--debug`` (anywhere on the line) or ``FEWMASK_DEBUG=1`` adds
it (:mod:`fewmask.failures`).

``train`` and ``test`` also run under ``torchrun`` (see docs/distributed.md): every rank trains,
rank 0 alone prints and writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fewmask.engine import distributed
from fewmask.errors import ConfigError, RunStoppedError
from fewmask.failures import report, shown_warnings
from fewmask.run import RunFolder
from fewmask.runlock import release_all


def _cmd_plugins(args: argparse.Namespace) -> int:
    from fewmask.session import default_registry

    registry = default_registry()
    infos = _select(registry, args.kind, args.filter)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "kind": i.kind,
                        "name": i.name,
                        "plugin": i.provider.plugin,
                        "distribution": i.provider.distribution,
                        "version": i.provider.version,
                        "description": i.description,
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return 0
    if not infos:
        print(f"no component matches {_selection(args.kind, args.filter)}", file=sys.stderr)
    rows = [("KIND", "NAME", "PROVIDER", "VERSION", "DESCRIPTION")] + [
        (
            i.kind,
            i.name,
            f"{i.provider.distribution} [{i.provider.plugin}]",
            i.provider.version,
            i.description,
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    for failure in registry.failures:
        print(f"FAILED: {failure}")
    return 0


def _select(registry: Any, kind: str | None, pattern: str | None) -> list[Any]:
    """The components of ``kind`` (a registry kind or config field) whose names match
    ``pattern`` (a shell-style pattern, e.g. ``meta*``; without wildcards, a substring)."""
    import fnmatch

    from fewmask.factory import component_kind

    infos = registry.list(component_kind(kind, registry) if kind else None)
    if pattern:
        if not any(c in pattern for c in "*?["):
            pattern = f"*{pattern}*"
        infos = [i for i in infos if fnmatch.fnmatch(i.name.lower(), pattern.lower())]
    return infos


def _selection(kind: str | None, pattern: str | None) -> str:
    return " and ".join(
        [*([f"kind {kind!r}"] if kind else []), *([f"--filter {pattern!r}"] if pattern else [])]
    )


def _cmd_options(args: argparse.Namespace) -> int:
    from fewmask.config import (
        ExperimentConfig,
        TrainConfig,
        component_markdown,
        fields_markdown,
        options_markdown,
    )
    from fewmask.factory import component_kind
    from fewmask.session import default_registry

    registry = default_registry()
    topic = args.topic
    if topic is None:
        print(options_markdown(registry), end="")
    elif topic in ("experiment", "train"):
        cls = ExperimentConfig if topic == "experiment" else TrainConfig
        print(f"## `{topic}`\n{fields_markdown(cls)}", end="")
    else:
        kind, _, name = topic.partition(".")
        kind = component_kind(kind, registry)
        infos = [registry.get(kind, name)] if name else registry.list(kind)
        print("\n".join(component_markdown(info) for info in infos), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from fewmask.factory import check_data_sources
    from fewmask.resolve import plain_config
    from fewmask.session import resolve

    resolved = resolve(args.config, args.override)
    check_data_sources(resolved)  # what train would refuse before reading data
    import yaml

    print(yaml.safe_dump(plain_config(resolved), sort_keys=False), end="")
    print(f"# {args.config}: OK", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fewmask.factory import build_run_trainer
    from fewmask.session import build_trainer, default_registry

    if args.resume:
        if args.config or args.run_dir:
            raise ConfigError(
                ["--resume: the run's checkpoint holds its config; pass no CONFIG or --run-dir"]
            )
        if distributed.is_main() and _is_folder(args.resume):
            RunFolder(args.resume).lock()  # before anything in it is read or cleaned up
        # the config comes from the checkpoint; -o overrides apply on top of it
        trainer = build_run_trainer(
            args.resume, args.override, what="--resume", registry=default_registry(), resume=True
        )
        if distributed.is_main():
            note = ""
            if args.override:
                given = " ".join(f"-o {o}" for o in args.override)
                note = f" with {given} (changes recorded in {trainer.run.resumes})"
            source = f" from {trainer.run.loaded_from}" if trainer.run.loaded_from else ""
            print(
                f"resuming {args.resume} at iteration {trainer.iteration}{source}{note}",
                file=sys.stderr,
            )
    else:
        if not args.config:
            raise ConfigError(
                ["usage: fewmask train CONFIG [-o key=value ...] or --resume RUN_DIR"]
            )
        # the path as a YAML string, whatever it holds (`#`, `: `, escapes)
        given = [f"run_dir={json.dumps(args.run_dir)}"] if args.run_dir is not None else []
        overrides = list(args.override) + given
        trainer = build_trainer(args.config, overrides)
        run = trainer.run
        if distributed.is_main():
            run.lock()  # another process writing this folder is refused, naming it
        if run.holds_run() and not args.force:
            raise ConfigError(
                [
                    f"$.run_dir: {run.path} already holds a run; continue it with "
                    f"`fewmask train --resume {run.path}`, pick another with --run-dir, "
                    "or pass --force"
                ]
            )
        if distributed.is_main():
            run.discard_run()  # --force: the old run's files (only those fewmask names)
    if distributed.is_main():  # the readable copy of the config (the checkpoint holds it too)
        trainer.run.write_config(trainer.config)
        print(f"threads: {trainer.threads}", file=sys.stderr)
    results = trainer.fit()
    if distributed.is_main():
        _print_results(results, trainer.run.results, trainer.run)
    return 0


def _is_folder(path: str) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, ValueError):  # a NUL, an unencodable name: RunFolder reports it
        return False


def _cmd_test(args: argparse.Namespace) -> int:
    from fewmask.factory import build_run_trainer
    from fewmask.session import create, default_registry
    from fewmask.transforms import match_shape

    seed = [] if args.seed is None else [f"seed={args.seed}"]
    overrides = [*args.override, *seed]
    if _is_file(args.run_dir):  # an export: its weights and masks in the run's Trainer
        from fewmask.export import export_trainer

        trainer = export_trainer(args.run_dir, overrides, registry=default_registry())
    else:
        trainer = build_run_trainer(args.run_dir, overrides, registry=default_registry())
    stopped = trainer.run.read_stopped()
    if stopped is not None:
        raise RunStoppedError(
            f"{trainer.run.path} stopped at iteration {stopped.get('iteration')}: "
            f"{stopped.get('reason')}. Its checkpoint (iteration {trainer.iteration}) is not a "
            f"finished run; resume it with a lower learning rate, or remove {trainer.run.stopped} "
            "to meta-test that checkpoint anyway"
        )
    if args.dataset is None:
        results = trainer.test(args.episodes, write_results=False)  # never over results.json
        if distributed.is_main():
            _print_results(results, trainer.run.write_test_results(results), trainer.run)
        return 0
    options = _parse_dataset_options(args.dataset_options)
    if args.root:
        options["root"] = args.root
    target = create("dataset", args.dataset, options).load("test")
    target = match_shape(target, trainer.datasets["train"].image_shape)
    trainer.sampler.check(target)
    episodes = args.episodes or trainer.train_config.test_episodes
    result = trainer.evaluate(
        "test", episodes, dataset=target, progress=trainer.train_config.progress
    )
    if not distributed.is_main():
        return 0
    print(
        f"meta-test on {target.name} ({trainer.sampler.ways}-way {trainer.sampler.shots}-shot, "
        f"{result.episodes} episodes, iteration {trainer.iteration}): "
        f"accuracy {100 * result.mean:.2f} +- {100 * result.ci95:.2f} % (95% CI)"
    )
    results = {
        "dataset": target.name,
        "dataset_options": options,
        "split": "test",
        "iteration": trainer.iteration,
        "accuracy": result.mean,
        "ci95": result.ci95,
        "loss": result.loss,
        "episodes": result.episodes,
        "ways": trainer.sampler.ways,
        "shots": trainer.sampler.shots,
    }
    print(f"results: {trainer.run.write_test_results(results)}")
    return 0


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _cmd_export(args: argparse.Namespace) -> int:
    from fewmask.export import export_run

    result = export_run(args.run_dir, args.format, args.out, force=args.force)
    print(result.text, end="")
    report = ", ".join(str(p) for p in result.report_files)
    print(f"exported {args.format}: {result.path} (report: {report})")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    from fewmask.export import adapt

    result = adapt(
        args.model,
        args.support,
        args.query,
        out=args.out,
        predictions=args.predictions,
        rebuild_head=args.rebuild_head,
        force=args.force,
    )
    print(f"adapted to {len(result.classes)} classes ({', '.join(result.classes)}); {result.head}")
    if result.accuracy is not None:
        print(f"query accuracy: {100 * result.accuracy:.2f} % ({len(result.predictions)} images)")
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _parse_dataset_options(text: str | None) -> dict:
    import yaml

    from fewmask.config import parse_value

    try:
        options = parse_value(text) if text else {}
    except yaml.YAMLError:
        options = None
    if not isinstance(options, dict):
        raise ConfigError([f"--dataset-options: expected a YAML mapping, got {text!r}"])
    return options


def _cmd_experiment(args: argparse.Namespace) -> int:
    from fewmask.config import apply_overrides
    from fewmask.experiments import run_experiment

    settings = apply_overrides({}, args.setting, flag="-x", example="seeds=[1,2]")
    out = Path(args.out) if args.out else Path("runs") / "experiments" / args.name
    # --force removes only what an earlier run of an experiment wrote there, once the config
    # and every variant are validated (fewmask.experiments.outputs)
    run_experiment(
        args.name,
        args.config,
        args.override,
        settings,
        out,
        progress=args.progress,
        force=args.force,
    )
    for table in sorted(out.glob("*.md")):
        print(f"## {table.stem}\n\n{table.read_text()}")
    outputs = sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".md", ".png"))
    print(f"outputs in {out}: {', '.join(outputs)}; TensorBoard: tensorboard --logdir {out}")
    return 0


def _print_results(results: dict, path: Path, run: RunFolder) -> None:
    print(
        f"meta-test {results['ways']}-way {results['shots']}-shot ({results['split']} split, "
        f"{results['episodes']} episodes, iteration {results['iteration']}): "
        f"accuracy {100 * results['accuracy']:.2f} +- {100 * results['ci95']:.2f} % (95% CI), "
        f"mask sparsity {100 * results['sparsity']:.1f} %"
    )
    cross = results.get("cross_domain", {})
    for label, other in cross.items():
        print(
            f"meta-test on {label}: accuracy {100 * other['accuracy']:.2f} "
            f"+- {100 * other['ci95']:.2f} % (95% CI)"
        )
    if cross:
        cells = [f"{100 * results['accuracy']:.2f} +- {100 * results['ci95']:.2f}"] + [
            f"{100 * o['accuracy']:.2f} +- {100 * o['ci95']:.2f}" for o in cross.values()
        ]
        print("| " + " | ".join(["own test split", *cross]) + " |")
        print("| " + " | ".join(cells) + " |")
    print(f"results: {path}; TensorBoard: tensorboard --logdir {run.path.parent}")


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


def build_parser() -> argparse.ArgumentParser:
    from fewmask.version import __version__

    parser = _Parser(
        prog="fewmask",
        description="Meta-learn sparse subnetworks (Meta-ticket) and MAML baselines.",
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
        "dataset",
    )
    p.add_argument(
        "--filter",
        metavar="PATTERN",
        help="only names matching PATTERN (shell-style, e.g. 'meta*'; plain text: a substring)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("options", help="every config field of every component, as markdown")
    p.add_argument(
        "topic",
        nargs="?",
        metavar="KIND[.NAME]",
        help="only one kind's components (masker), one component (masker.iterand), or the "
        "experiment or train section",
    )
    p.set_defaults(func=_cmd_options)

    override = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a config value, e.g. -o train.iterations=100 (repeatable)",
    }
    p = sub.add_parser("validate", help="check a config and print it with every default filled in")
    p.add_argument("config", help="YAML, TOML or JSON config file")
    p.add_argument("-o", "--override", **override)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", help="meta-train, then meta-test the final model")
    p.add_argument("config", nargs="?", help="YAML, TOML or JSON config file")
    p.add_argument("-o", "--override", **override)
    p.add_argument("--run-dir", help="where to write the run (overrides run_dir)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR with the config its checkpoint holds (and any -o)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing run in run_dir")
    p.set_defaults(func=_cmd_train)

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
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("export", help="write a run's subnetwork: packed, safetensors or onnx")
    p.add_argument("run_dir", metavar="RUN")
    p.add_argument("--format", choices=("packed", "safetensors", "onnx"), default="packed")
    p.add_argument("--out", metavar="FILE", help="default: RUN/export.{fmpack,safetensors,onnx}")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.set_defaults(func=_cmd_export)

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
    p.set_defaults(func=_cmd_adapt)

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
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FEWMASK_DEBUG", "") not in ("", "0")
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        with shown_warnings():
            return args.func(args)
    except KeyboardInterrupt:
        print("fewmask: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # one message and an exit status (fewmask.failures)
        return report(exc, debug)
    finally:
        release_all()  # the run folders this command locked
        distributed.destroy()  # under torchrun; a no-op otherwise


if __name__ == "__main__":
    sys.exit(main())
