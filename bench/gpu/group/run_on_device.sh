#!/usr/bin/env bash
# On a GPU machine (after `. .gpu-bundle/env.sh`): makes the 1b preset and runs sqa-group-bench.
# Writes JSON lines to $OUT/group.jsonl (scaling runs) and $OUT/longest.jsonl (LONGEST=1).
#   WORLD=2 TOKENS=32768,131072 bench/gpu/group/run_on_device.sh   # heads and sequence vs one GPU
#   WORLD=1 TOKENS=32768,131072 ...                                # one GPU: per-rank fields only
#   LONGEST=1 WORLD=1 STEP=65536 ...                                # longest prompt on WORLD GPUs
set -euo pipefail
B=${BUNDLE:-.gpu-bundle}
OUT=${OUT:-/tmp}
WORLD=${WORLD:-2}
TOKENS=${TOKENS:-32768,131072}
LAYOUT=${LAYOUT:-SQA}
MODES=${MODES:-heads,sequence}
# The preset accepts 1M positions; raised so that memory, not positions, ends the search (the
# weights and the arithmetic do not depend on it).
MAX_POS=${MAX_POS:-16777216}
M=/tmp/m1b-$LAYOUT-$MAX_POS
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader | tee "$OUT/gpus.txt"
[[ -f "$M/config.json" ]] ||
  "$B/sqa-mkmodel" --out "$M" --preset 1b --layout "$LAYOUT" --dtype bf16 --seed 7 --max-pos "$MAX_POS" >/dev/null
if [[ "${LONGEST:-0}" == 1 ]]; then
  echo "model: 1b $LAYOUT bf16 max-pos $MAX_POS; world $WORLD; longest prompt, step ${STEP:-65536}" | tee "$OUT/longest.txt"
  "$B/sqa-group-bench" --longest --model "$M" --world "$WORLD" --modes "$MODES" --step "${STEP:-65536}" \
    --max-tokens "${MAX_TOKENS:-$MAX_POS}" --timeout-s 60 \
    2> >(tee "$OUT/longest.err" >&2) | tee "$OUT/longest.jsonl"
else
  echo "model: 1b $LAYOUT bf16; world $WORLD; tokens $TOKENS" | tee "$OUT/group.txt"
  "$B/sqa-group-bench" --model "$M" --tokens "$TOKENS" --world "$WORLD" --modes "$MODES" \
    2> >(tee "$OUT/group.err" >&2) | tee "$OUT/group.jsonl"
fi
