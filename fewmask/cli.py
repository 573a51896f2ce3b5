"""The ``fewmask`` command: plugins, validate, train, test.

Exit status: 0 success, 2 bad configuration or usage, 1 any other fewmask error (data, checkpoint,
plugin, non-finite loss). Errors are one clear message, never a traceback.

``train`` and ``test`` also run under ``torchrun`` (see docs/distributed.md): every rank trains,
rank 0 alone prints and writes the run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fewmask.engine import distributed
from fewmask.errors import ConfigError, FewmaskError, UnknownComponentError
from fewmask.run import RunFolder


def _cmd_plugins(args: argparse.Namespace) -> int:
    from fewmask.session import default_registry

    registry = default_registry()
    infos = registry.list()
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


def _cmd_options(args: argparse.Namespace) -> int:
    from fewmask.options import options_markdown
    from fewmask.session import default_registry

    print(options_markdown(default_registry()), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from fewmask.resolve import plain_config
    from fewmask.session import resolve

    resolved = resolve(args.config, args.override)
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
        # the config comes from the checkpoint; -o overrides apply on top of it
        trainer = build_run_trainer(
            args.resume, args.override, what="--resume", registry=default_registry()
        )
        if distributed.is_main():
            print(f"resuming {args.resume} at iteration {trainer.iteration}", file=sys.stderr)
    else:
        if not args.config:
            raise ConfigError(
                ["usage: fewmask train CONFIG [-o key=value ...] or --resume RUN_DIR"]
            )
        overrides = list(args.override) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
        trainer = build_trainer(args.config, overrides)
        run = trainer.run
        if run.holds_run() and not args.force:
            raise ConfigError(
                [
                    f"$.run_dir: {run.path} already holds a run; continue it with "
                    f"`fewmask train --resume {run.path}`, pick another with --run-dir, "
                    "or pass --force"
                ]
            )
        if distributed.is_main():
            run.discard_run()  # --force: nothing of the old run may be resumed or read back
    if distributed.is_main():  # the readable copy of the config (the checkpoint holds it too)
        trainer.run.write_config(trainer.config)
    results = trainer.fit()
    if distributed.is_main():
        _print_results(results, trainer.run)
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from fewmask.config import parse_value
    from fewmask.factory import build_run_trainer
    from fewmask.session import create, default_registry
    from fewmask.transforms import match_shape

    seed = [] if args.seed is None else [f"seed={args.seed}"]
    trainer = build_run_trainer(args.run_dir, [*args.override, *seed], registry=default_registry())
    if args.dataset is None:
        results = trainer.test(args.episodes)
        if distributed.is_main():
            _print_results(results, trainer.run)
        return 0
    options = parse_value(args.dataset_options) if args.dataset_options else {}
    if not isinstance(options, dict):
        raise ConfigError([f"--dataset-options: expected a mapping, got {args.dataset_options!r}"])
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
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    import shutil

    from fewmask.config import apply_overrides
    from fewmask.experiments import run_experiment

    settings = apply_overrides({}, args.setting, flag="-x", example="seeds=[1,2]")
    out = Path(args.out) if args.out else Path("runs") / "experiments" / args.name
    if args.force and out.exists():
        if not (out / "runs").is_dir() and any(out.iterdir()):
            raise ConfigError([f"--force: {out} does not look like an experiment folder"])
        shutil.rmtree(out)
    run_experiment(args.name, args.config, args.override, settings, out, progress=args.progress)
    for table in sorted(out.glob("*.md")):
        print(f"## {table.stem}\n\n{table.read_text()}")
    outputs = sorted(p.name for p in out.iterdir() if p.suffix in (".csv", ".md", ".png"))
    print(f"outputs in {out}: {', '.join(outputs)}; TensorBoard: tensorboard --logdir {out}")
    return 0


def _print_results(results: dict, run: RunFolder | None) -> None:
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
    if run is not None:
        print(f"results: {run.results}; TensorBoard: tensorboard --logdir {run.path}")


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
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list every registered component and its provider")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("options", help="every config field of every component, as markdown")
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

    p = sub.add_parser("test", help="meta-test the checkpoint of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
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
    p.add_argument("--force", action="store_true", help="delete the output folder and start over")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"fewmask: config error: {exc}", file=sys.stderr)
        return 2
    except UnknownComponentError as exc:
        print(f"fewmask: {exc}", file=sys.stderr)
        return 2
    except FewmaskError as exc:
        print(f"fewmask: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fewmask: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    finally:
        distributed.destroy()  # under torchrun; a no-op otherwise


if __name__ == "__main__":
    sys.exit(main())
