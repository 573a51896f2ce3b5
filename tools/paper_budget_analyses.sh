#!/usr/bin/env bash
# The paper's analyses at the budgets in docs/results.md, one lane per argument:
#   bash tools/paper_budget_analyses.sh readme     # the README's main command, as written
#   bash tools/paper_budget_analyses.sh probe      # Fig 2: 3 methods x 4 inner lrs, 5,000 iterations
#   bash tools/paper_budget_analyses.sh probe-seed2   # the same with seed 2 (probe-seed3: seed 3)
#   bash tools/paper_budget_analyses.sh constant   # constant vs signed-constant arms, 1,000 iterations
#   bash tools/paper_budget_analyses.sh constant-seed1   # the same, seed 1 only
#   bash tools/paper_budget_analyses.sh long       # positive constants, width 4, meta-batch 32
#   bash tools/paper_budget_analyses.sh long-seed2 # the same with seed 2
# Each step reuses finished runs and resumes a started one, so a stopped lane continues.
set -euo pipefail
export OMP_NUM_THREADS=1
X=runs/experiments
case ${1:?usage: paper_budget_analyses.sh readme|probe|probe-seed2|probe-seed3|constant|constant-seed1|long|long-seed2} in
  readme)
    [ -f runs/readme_main/results.json ] || /usr/bin/time -f "README command: %e s wall" \
      fewmask train examples/metaticket_glyphs.yaml --run-dir runs/readme_main -o train.progress=false
    ;;
  probe)
    for lrs in "[0.01,0.4]" "[0.01,0.05,0.1,0.4]"; do
      fewmask experiment task-gradient examples/experiments/glyphs_5shot.yaml \
        -o train.iterations=5000 -o objective.options.warmup=500 -o train.val_episodes=0 \
        -x "inner_lrs=$lrs" --no-progress --out $X/task-gradient-sweep
    done
    ;;
  probe-seed2|probe-seed3)
    seed=${1#probe-seed}
    fewmask experiment task-gradient examples/experiments/glyphs_5shot.yaml \
      -o train.iterations=5000 -o objective.options.warmup=500 -o train.val_episodes=0 \
      -o seed=$seed --no-progress --out $X/task-gradient-sweep-seed$seed
    ;;
  constant|constant-seed1)
    stages=("[1]" "[1,2,3]")
    [ "$1" = constant ] || stages=("[1]")
    for seeds in "${stages[@]}"; do
      fewmask experiment constant-weights examples/experiments/constant_weights.yaml \
        -o train.meta_batch_size=4 -o train.val_episodes=0 \
        -x variants=[metaticket_constant,random_subnetwork,metaticket_signed_constant,random_subnetwork_signed_constant] \
        -x "seeds=$seeds" --no-progress --out $X/constant-weights-arms
    done
    ;;
  long|long-seed2)
    seed=1 out=$X/constant-weights-long
    [ "$1" = long-seed2 ] && seed=2 out=$X/constant-weights-long-seed2
    fewmask experiment constant-weights examples/experiments/constant_weights.yaml \
      -o train.meta_batch_size=32 -o train.iterations=60000 -o train.checkpoint_every=100 \
      -o train.val_episodes=0 -x variants=[metaticket_constant] -x diagnostics_every=100 \
      -x "seeds=[$seed]" --no-progress --out $out
    ;;
  *) echo "unknown lane $1" >&2; exit 2 ;;
esac
