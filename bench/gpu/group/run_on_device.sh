#!/usr/bin/env bash
# On a machine with 2+ GPUs (after `. .gpu-bundle/env.sh`): makes the 1b SQA preset and runs
# sqa-group-bench in both modes against one GPU. Writes JSON lines to $OUT/group.jsonl.
set -euo pipefail
B=${BUNDLE:-.gpu-bundle}
OUT=${OUT:-/tmp}
WORLD=${WORLD:-2}
TOKENS=${TOKENS:-32768,131072}
LAYOUT=${LAYOUT:-SQA}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
"$B/sqa-mkmodel" --out /tmp/m1b --preset 1b --layout "$LAYOUT" --dtype bf16 --seed 7 >/dev/null
echo "model: 1b $LAYOUT bf16; world $WORLD; tokens $TOKENS" | tee "$OUT/group.txt"
"$B/sqa-group-bench" --model /tmp/m1b --tokens "$TOKENS" --world "$WORLD" --modes heads,sequence \
  2> >(tee "$OUT/group.err" >&2) | tee "$OUT/group.jsonl"
