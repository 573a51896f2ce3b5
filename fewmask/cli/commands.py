"""The commands of ``fewmask``: one function per subcommand, given the parsed arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fewmask.errors import ConfigError, RunStoppedError
from fewmask.runtime import distributed
from fewmask.runtime.folder import RunFolder
from fewmask.training.loggers import tensorboard_command


def cmd_plugins(args: argparse.Namespace) -> int:
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


def cmd_options(args: argparse.Namespace) -> int:
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


def cmd_validate(args: argparse.Namespace) -> int:
    from fewmask.config.resolve import plain_config
    from fewmask.factory import check_data_sources
    from fewmask.session import resolve

    resolved = resolve(args.config, args.override)
    for field in ("sampler", "masker", "inner", "objective"):  # as train builds them, before
        resolved.components[field].build()  # the data: their constructors' checks
    check_data_sources(resolved)  # what train would refuse before reading data
    import yaml

    print(yaml.safe_dump(plain_config(resolved), sort_keys=False), end="")
    print(f"# {args.config}: OK", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fewmask.session import train

    def say(line: str) -> None:
        if distributed.is_main():
            print(line, file=sys.stderr)

    if args.resume:
        if args.config or args.run_dir:
            raise ConfigError(
                ["--resume: the run's checkpoint holds its config; pass no CONFIG or --run-dir"]
            )
        results = train(None, args.resume, overrides=args.override, start="resume", echo=say)
    else:
        if not args.config:
            raise ConfigError(
                ["usage: fewmask train CONFIG [-o key=value ...] or --resume RUN_DIR"]
            )
        start = "force" if args.force else "new"
        results = train(args.config, args.run_dir, overrides=args.override, start=start, echo=say)
    if distributed.is_main():
        run = RunFolder(results.run_dir)
        _print_results(results, run.results, run)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from fewmask.datasets.transforms import match_shape
    from fewmask.factory import build_run_trainer
    from fewmask.session import create, default_registry
    from fewmask.training.evaluation import meta_test

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
            f"finished run; remove {trainer.run.stopped} to meta-test that checkpoint anyway"
        )
    if args.dataset is None:
        result = meta_test(trainer, args.episodes)
        if trainer.process.is_main:
            results = result.to_dict()
            _print_results(results, trainer.run.write_test_results(results), trainer.run)
        return 0
    options = _parse_dataset_options(args.dataset_options)
    if args.root:
        options["root"] = args.root
    target = create("dataset", args.dataset, options).load("test")
    target = match_shape(target, trainer.datasets["train"].image_shape)
    trainer.sampler.check(target)
    result = meta_test(trainer, args.episodes, dataset=target)
    if not trainer.process.is_main:
        return 0
    print(
        f"meta-test on {target.name} ({result.ways}-way {result.shots}-shot, "
        f"{result.episodes} episodes, iteration {result.iteration}): "
        f"accuracy {100 * result.accuracy:.2f} +- {100 * result.ci95:.2f} % (95% CI)"
    )
    results = {**result.to_dict(), "dataset_options": options}
    print(f"results: {trainer.run.write_test_results(results)}")
    return 0


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def cmd_export(args: argparse.Namespace) -> int:
    from fewmask.export import export_run

    result = export_run(args.run_dir, args.format, args.out, force=args.force)
    print(result.text, end="")
    report = ", ".join(str(p) for p in result.report_files)
    print(f"exported {args.format}: {result.path} (report: {report})")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
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


def cmd_experiment(args: argparse.Namespace) -> int:
    from fewmask.config import apply_overrides
    from fewmask.experiments import run_experiment

    settings = apply_overrides({}, args.setting, flag="-x", example="seeds=[1,2]")
    out = Path(args.out) if args.out else Path("runs") / "experiments" / args.name
    # --force removes only what an earlier run of an experiment wrote there, once the config
    # and every variant are validated (fewmask.experiments.outputs)
    with _tables_shown(out):
        run_experiment(
            args.name,
            args.config,
            args.override,
            settings,
            out,
            progress=args.progress,
            force=args.force,
            collect=args.collect,
            **_launcher(args),
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fewmask.experiments.sweep import parse_axes, run_sweep

    axes = parse_axes(args.axis)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / Path(args.config).stem
    with _tables_shown(out):
        run_sweep(
            args.config,
            axes,
            args.override,
            out,
            progress=args.progress,
            force=args.force,
            collect=args.collect,
            **_launcher(args),
        )
    return 0


def _launcher(args: argparse.Namespace) -> dict[str, Any]:
    """``launcher`` and ``launcher_options`` from ``--launcher``, ``-l`` and ``--workers``."""
    from fewmask.config import apply_overrides

    options = apply_overrides({}, args.launcher_option, flag="-l", example="partition=gpu")
    if args.workers is not None:
        if args.launcher != "local":
            raise ConfigError(
                [f"--workers: only the local launcher has workers (not {args.launcher!r})"]
            )
        options["workers"] = args.workers
    return {"launcher": args.launcher, "launcher_options": options}


@contextlib.contextmanager
def _tables_shown(out: Path) -> Iterator[None]:
    """Print the tables written into ``out`` (also when some runs failed, before the error)."""
    from fewmask.errors import JobsFailedError

    try:
        yield
    except JobsFailedError:
        _show_tables(out)
        raise
    _show_tables(out)


def _show_tables(out: Path) -> None:
    """The tables and pictures the experiment recorded as its own (never a file of yours)."""
    from fewmask.experiments.outputs import written

    own = [p for p in written(out) if p.parent == out]
    for table in sorted(p for p in own if p.suffix == ".md"):
        print(f"## {table.stem}\n\n{table.read_text()}")
    outputs = sorted(p.name for p in own if p.suffix in (".csv", ".md", ".png"))
    print(f"outputs in {out}: {', '.join(outputs)}; TensorBoard: {tensorboard_command(out)}")


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
    print(f"results: {path}; TensorBoard: {tensorboard_command(run.path.parent)}")
