#!/bin/bash
# One device call: correctness test first, then sqa-attn-bench and the PyTorch SDPA comparison.
# Usage (device): . .gpu-bundle/env.sh && bash bench/gpu/attention/run_on_device.sh [bench args]
# Needs .gpu-bundle with sqa-attn-bench and attention_cuda_test (shared/tools/device-bundle.sh).
set -o pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
timeout ${TEST_TIMEOUT:-150} .gpu-bundle/attention_cuda_test 2>&1 | tee "$OUT/test.log" | tail -25
echo "test rc=$?"
timeout ${BENCH_TIMEOUT:-240} .gpu-bundle/sqa-attn-bench --json "$OUT/attn.json" ${BENCH_ARGS:-} > "$OUT/attn.log" 2>&1
echo "bench rc=$?"; cat "$OUT/attn.log"
if [ -z "${NO_SDPA:-}" ]; then
  PYTHONUNBUFFERED=1 timeout ${SDPA_TIMEOUT:-200} python3 bench/gpu/attention/sdpa.py --json "$OUT/sdpa.json" ${SDPA_ARGS:-} > "$OUT/sdpa.log" 2>&1
  echo "sdpa rc=$?"; grep -v '^{' "$OUT/sdpa.log" | tail -5; wc -l "$OUT/sdpa.log"
fi
