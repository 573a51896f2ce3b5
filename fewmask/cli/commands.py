"""The commands of ``fewmask``: one function per subcommand, given the parsed arguments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fewmask.errors import ConfigError, RunStoppedError
from fewmask.runtime import distributed
from fewmask.runtime.folder import RunFolder


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


def cmd_test(args: argparse.Namespace) -> int:
    from fewmask.datasets.transforms import match_shape
    from fewmask.factory import build_run_trainer
    from fewmask.session import create, default_registry

    seed = [] if args.seed is None else [f"seed={args.seed}"]
    trainer = build_run_trainer(args.run_dir, [*args.override, *seed], registry=default_registry())
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
    from fewmask.experiments.outputs import written

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
    own = [p for p in written(out) if p.parent == out]  # never a file of yours in OUT
    for table in sorted(p for p in own if p.suffix == ".md"):
        print(f"## {table.stem}\n\n{table.read_text()}")
    outputs = sorted(p.name for p in own if p.suffix in (".csv", ".md", ".png"))
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
