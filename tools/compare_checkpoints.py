"""Compare two folders of tools/fixed_seed_runs.sh: every backbone, masker and optimizer tensor
of each run's checkpoint.pt, and its results.json accuracy and loss, equal bit for bit.

    python tools/compare_checkpoints.py BEFORE AFTER      # exit 1 if anything differs
"""

import json
import sys
from pathlib import Path

import torch

PARTS = ("backbone", "masker", "optimizer")


def flat(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{prefix}/{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from flat(v, f"{prefix}[{i}]")
    elif isinstance(x, torch.Tensor):
        yield prefix, x


a, b = Path(sys.argv[1]), Path(sys.argv[2])
bad = 0
for run in sorted(p.name for p in a.iterdir() if p.is_dir()):
    sa = torch.load(a / run / "checkpoint.pt", weights_only=False)
    sb = torch.load(b / run / "checkpoint.pt", weights_only=False)
    ta = dict(flat({k: sa[k] for k in PARTS}))
    tb = dict(flat({k: sb[k] for k in PARTS}))
    ta = {k.replace("/optimizer/state", "/opt"): v for k, v in ta.items()}
    tb = {k.replace("/optimizer/state", "/opt"): v for k, v in tb.items()}
    same = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ra = json.loads((a / run / "results.json").read_text())
    rb = json.loads((b / run / "results.json").read_text())
    same_r = ra["accuracy"] == rb["accuracy"] and ra["loss"] == rb["loss"]
    tensors = "identical" if same else "DIFFER"
    results = "identical" if same_r else "DIFFER"
    print(
        f"{run:12s} tensors {tensors} ({len(ta)} tensors)  results {results} "
        f"acc {ra['accuracy']:.6f} vs {rb['accuracy']:.6f}"
    )
    if not same and ta.keys() != tb.keys():
        only_a, only_b = sorted(set(ta) - set(tb))[:5], sorted(set(tb) - set(ta))[:5]
        print("  keys only in A:", only_a, " only in B:", only_b)
    bad += (not same) + (not same_r)
sys.exit(1 if bad else 0)
