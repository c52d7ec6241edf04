#!/usr/bin/env bash
# The torch-free runtime predicts the same labels as the PyTorch checkpoint on the whole
# canonical test split. torch/timm/torchvision are made unimportable for the ONNX run.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-runs/bench/mobilenetv2_100-finetune-ce-s0/best.pt}
ONNX=${2:-runs/edge/mobilenetv2_100-mobilenetv2_100-finetune-ce-s0-best.onnx}
DATA=../shared/data/trashnet
work=$(mktemp -d)
mapfile -t files < <(awk -F, '{sub(/\r$/, "")} NR>1 && $3=="test" {print "'$DATA'/"$1}' ../shared/data/trashnet-split.csv)
for mod in torch timm torchvision; do
    mkdir -p $work/block/$mod && echo 'raise ImportError("blocked: the edge runtime must not import torch")' > $work/block/$mod/__init__.py
done
wastenet predict --checkpoint "$CKPT" "${files[@]}" --format csv --out $work/torch.csv
PYTHONPATH=$work/block wastenet predict --checkpoint "$ONNX" "${files[@]}" --format csv --out $work/onnx.csv
python - "$work/torch.csv" "$work/onnx.csv" <<'PY'
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
same = sum(x["label"] == y["label"] for x, y in zip(a, b))
dec = sum(x["decision"] == y["decision"] for x, y in zip(a, b))
print(f"{len(a)} test images: labels identical {same}/{len(a)}, decisions identical {dec}/{len(a)}")
PY
