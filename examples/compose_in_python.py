"""Compose a Meta-ticket Trainer from Python objects instead of a config file.

python examples/compose_in_python.py            # 2,000 iterations on the glyph set (~1-2 min)
python examples/compose_in_python.py --smoke    # a few iterations (what CI runs)
"""

from __future__ import annotations

import argparse

import torch
from fewmask_plugin_metaticket import (
    MetaTicketConfig,
    MetaTicketMasker,
    MetaTicketObjective,
    MetaTicketObjectiveConfig,
)

from fewmask import TrainConfig, Trainer, create


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = parser.parse_args()
    iterations, test_episodes = (5, 20) if args.smoke else (2000, 1000)

    torch.manual_seed(1)
    source = create("dataset", "glyphs")  # components by registered name ...
    datasets = {split: source.load(split) for split in ("train", "val", "test")}
    sampler = create("sampler", "episodic", {"ways": 5, "shots": 1})
    backbone = create(
        "backbone", "omniglot_mlp", {"width": 1.0}, input_shape=(1, 28, 28), num_classes=5
    )
    masker = MetaTicketMasker(MetaTicketConfig(init_sparsity=0.0))  # ... or as plain objects
    inner = create("inner_optimizer", "sgd", {"lr": 0.4, "steps": 1, "test_steps": 3})
    objective = MetaTicketObjective(MetaTicketObjectiveConfig(lr=10.0, warmup=100))

    trainer = Trainer(
        backbone,
        masker,
        inner,
        objective,
        sampler,
        datasets,
        TrainConfig(
            iterations=iterations,
            val_every=500,
            val_episodes=100,
            test_episodes=test_episodes,
            progress=not args.smoke,
        ),
        seed=1,
    )
    results = trainer.fit()
    print(
        f"meta-test accuracy {100 * results['accuracy']:.2f} +- {100 * results['ci95']:.2f} %, "
        f"mask sparsity {100 * results['sparsity']:.1f} %"
    )


if __name__ == "__main__":
    main()
