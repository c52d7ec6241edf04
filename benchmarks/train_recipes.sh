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

case "${1:-all}" in
  mobilenet) bench --models mobilenetv2_100 --recipes linear,finetune --losses ce --seeds 0 ;;
  densenet)  bench --models densenet121 --recipes linear,finetune --losses ce --seeds 0 ;;
  # the wastenet recipe's rows: final all-layer step of 10 epochs (default decay 0.7, 2-epoch steps);
  # runs/bench3: bf16 + channels-last defaults (runs/bench2 held the same recipe's fp32/NCHW-era runs)
  wastenet)  OUT=${OUT_WASTENET:-runs/bench3} bench --models densenet121,mobilenetv2_100 --recipes wastenet --losses ce --seeds 0 --set epochs=10 ;;
  focal)     OUT=${OUT_WASTENET:-runs/bench2} bench --models mobilenetv2_100 --recipes wastenet --losses focal --seeds 0 --set epochs=10 ;;
  seeds)     OUT=${OUT_WASTENET:-runs/bench3} bench --models densenet121 --recipes wastenet --losses ce --seeds 0,1,2 --set epochs=10 ;;
  seeds-mobilenet) OUT=${OUT_WASTENET:-runs/bench3} bench --models mobilenetv2_100 --recipes wastenet --losses ce --seeds 0,1,2 --set epochs=10 ;;
  densenet169-wastenet) OUT=${OUT_WASTENET:-runs/bench3} bench --models densenet169 --recipes wastenet --losses ce --seeds 0,1 --set epochs=10 ;;
  densenet169) bench --models densenet169 --recipes linear --losses ce --seeds 0 ;;   # backbone-only weights
  table)     bench --models mobilenetv2_100,densenet121 --recipes linear,finetune --losses ce --seeds 0 ;;
  all)       for part in mobilenet densenet wastenet focal densenet169 seeds seeds-mobilenet densenet169-wastenet table; do "$0" "$part"; done ;;
esac
