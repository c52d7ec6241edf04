#!/usr/bin/env bash
# Field augmentation, one part at a time (BENCHMARKS.md, "Field augmentation, one part at a time"):
# mobilenetv2 `linear`, seed 0, each variant leaving one part out of the default, then the field eval.
#   benchmarks/field_ablation.sh [OUT_PREFIX]      # default runs/abl-
# Finished variants (a best.pt and a field.json) are skipped, so an interrupted sweep continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${1:-runs/abl-}
W=${WASTENET:-wastenet}
TN="--data ../shared/data/trashnet --split-file ../shared/data/trashnet-split.csv --seed 0 --model mobilenetv2_100 --weights ../shared/weights/mobilenetv2_100.safetensors --recipe linear"
FIELD="--data ../shared/data/field-drinkingwaste --class-map benchmarks/field/drinkingwaste.yaml --boxes ../shared/data/field-drinkingwaste/labels.csv"
run() {  # name, extra train flags
  local name=$1; shift
  local out=$PREFIX$name
  [ -f "$out/eval-field/field.json" ] && { echo "$name: done"; return; }
  $W train $TN "$@" --out "$out" > "$out.log" 2>&1
  $W eval --checkpoint "$out/best.pt" $FIELD --out "$out/eval-field" > "$out-field.log" 2>&1
  echo "$name: $(grep '^test: ' "$out.log")"
}
run base
run no-scale --no-scale-jitter
run no-color --color-jitter 0
run no-blur --blur-jpeg 0
run off --composite off
run trivial --auto-augment trivial
run trivial-only --composite off --auto-augment trivial
