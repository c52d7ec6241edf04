#!/usr/bin/env bash
# The training benchmarks behind BENCHMARKS.md: canonical TrashNet split, this 2-core CPU.
# Runs one configuration after another (never two at once: timings must not share the CPU).
# Finished runs are reused, so the script can be re-run after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/trashnet
SPLIT=../shared/data/trashnet-split.csv
W=../shared/weights
OUT=${OUT:-runs/bench}
bench() { wastenet bench --data $DATA --split-file $SPLIT --weights-dir $W --out $OUT "$@"; }

# issue 2 (foundation) and issue 3 (wastenet), seed 0, cross-entropy
for model in mobilenetv2_100 densenet121; do
    bench --models $model --recipes linear,finetune,wastenet --losses ce --seeds 0
done
# focal loss against cross-entropy, and more seeds for the edge model
bench --models mobilenetv2_100 --recipes wastenet --losses focal --seeds 0
bench --models mobilenetv2_100 --recipes wastenet --losses ce --seeds 0,1,2
# the whole table
bench --models mobilenetv2_100,densenet121 --recipes linear,finetune,wastenet --losses ce --seeds 0
