"""Soak test: a long Meta-ticket run on the glyph set, checkpointing, with resident memory sampled.

    python benchmarks/soak.py                      # 10,000 iterations, checkpoint every 500
    python benchmarks/soak.py --iterations 600     # quick look

Prints RSS at every checkpoint and the growth after warm-up (the first 1,000 iterations).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from fewmask import build_trainer

ROOT = Path(__file__).parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(
            ROOT / "examples" / "metaticket_glyphs.yaml",
            [
                f"train.iterations={args.iterations}",
                f"train.checkpoint_every={args.every}",
                f"train.val_every={args.every}",
                "train.test_episodes=100",
                "train.progress=false",
                f"run_dir={run_dir}",
            ],
        )
        samples: dict[int, float] = {}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                it = trainer.iteration
                if it % args.every == 0 and it not in samples:
                    samples[it] = rss_mib()
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        start = time.perf_counter()
        watcher.start()
        trainer.fit()
        done.set()
        watcher.join()
        seconds = time.perf_counter() - start
    print("iteration  RSS MiB")
    for it in sorted(samples):
        print(f"{it:9d}  {samples[it]:7.1f}")
    warm = [v for it, v in sorted(samples.items()) if it >= min(1000, args.iterations // 2)]
    print(
        f"{args.iterations} iterations in {seconds:.0f} s; RSS after warm-up: "
        f"min {min(warm):.1f}, max {max(warm):.1f}, last - first {warm[-1] - warm[0]:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
