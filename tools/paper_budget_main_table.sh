#!/usr/bin/env bash
# The main table at the paper's budget (docs/results.md), one lane per shot count:
#   bash tools/paper_budget_main_table.sh 1   # 5-way 1-shot
#   bash tools/paper_budget_main_table.sh 5   # 5-way 5-shot (run both at once on two cores)
# Seeds are added one at a time, so a stopped lane leaves complete method pairs; rerunning
# reuses finished runs and resumes a started one from its checkpoint.
set -euo pipefail
shots=${1:?usage: paper_budget_main_table.sh SHOTS}
export OMP_NUM_THREADS=1
for seeds in "[1]" "[1,2]" "[1,2,3]"; do
  fewmask experiment cross-domain examples/experiments/main_table.yaml \
    -x methods=[maml,metaticket] -x "seeds=$seeds" -o "sampler.options.shots=$shots" \
    -o train.progress=false --out "runs/experiments/main-table-${shots}shot"
done
