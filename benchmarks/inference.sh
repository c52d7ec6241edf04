#!/usr/bin/env bash
# Inference-side benchmarks behind BENCHMARKS.md (issues 4-7), on the checkpoints that
# benchmarks/train_recipes.sh trained. Run on a quiet machine, one after another.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/trashnet
SPLIT=../shared/data/trashnet-split.csv
MN=${MN:-runs/bench/mobilenetv2_100-wastenet-ce-s0/best.pt}
DN=${DN:-runs/bench/densenet121-wastenet-ce-s0/best.pt}
R=benchmarks/results
mkdir -p $R runs/edge

echo "## predict throughput (decoding included) vs bare forward, batch 32"
for ck in $MN $DN; do
    python benchmarks/predict_throughput.py --checkpoint $ck --data $DATA --split-file $SPLIT --limit 256 \
        --json $R/throughput-$(basename $(dirname $ck)).json
done

echo "## edge: PyTorch eager vs onnxruntime fp32 vs int8"
python benchmarks/edge_latency.py --checkpoint $MN $DN --data $DATA --split-file $SPLIT \
    --runs 100 --json $R/edge_latency.json --work-dir runs/edge

echo "## serving under load"
python benchmarks/load_test.py --checkpoint $MN --clients 8 --requests 200 --json $R/load-mnv2-torch.json
INT8=$(ls runs/edge/*mobilenetv2*int8*.onnx 2>/dev/null | head -1 || true)
if [ -n "$INT8" ]; then
    python benchmarks/load_test.py --checkpoint $INT8 --clients 8 --requests 200 --json $R/load-mnv2-int8.json
fi

echo "## data-parallel training throughput, 1 x 2 threads vs 2 x 1 thread"
python benchmarks/ddp_throughput.py --steps 8 --repeats 2 --json $R/ddp.json
