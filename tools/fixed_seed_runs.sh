#!/usr/bin/env bash
# Fixed-seed short runs whose checkpoints must not change across a refactor that keeps numerics:
#   bash tools/fixed_seed_runs.sh OUT          (from the repository root, fewmask on PATH)
#   python tools/compare_checkpoints.py BEFORE AFTER
# Run it once on the old commit (e.g. a `git worktree`, with that tree first on PYTHONPATH) and
# once on the new one. One thread, so the float order is the same.
set -euo pipefail
out=$1
mkdir -p "$out"
export OMP_NUM_THREADS=1
base=(examples/metaticket_glyphs.yaml -o train.val_episodes=5 -o train.progress=false)
short=(-o train.iterations=12 -o train.val_every=6 -o train.test_episodes=20 -o train.checkpoint_every=6)
cosine=(-o train.iterations=40 -o train.val_every=20 -o train.test_episodes=50 -o train.checkpoint_every=20 -o objective.options.warmup=5)
run() { local name=$1; shift; fewmask train "${base[@]}" "$@" --run-dir "$out/$name" > "$out/$name.log" 2>&1; }
run metaticket "${short[@]}"
run maml "${short[@]}" -o objective.name=maml
run fomaml "${short[@]}" -o objective.name=maml -o inner.options.first_order=true
run mt_fast "${short[@]}" -o train.engine=fast
run iterand "${short[@]}" -o masker.name=iterand
run boil "${short[@]}" -o inner.name=boil
run conv4_fast "${short[@]}" -o backbone.name=conv4 -o "backbone.options={}" -o train.engine=fast
run mt_cosine "${cosine[@]}"
run maml_cosine "${cosine[@]}" -o objective.name=maml -o objective.options.schedule=cosine
echo "wrote $out"
