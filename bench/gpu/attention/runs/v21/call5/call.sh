#!/bin/bash
# Session 10, call 5 (final binaries, v6 the default): all GPU tests, the decode table (v6 and v5
# side by side, read-only floor, phase timelines), the end-to-end table.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 180 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED|PASSED" $O/r/attn_test.log | tail -25; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 200 $B/sqa-attn-bench --prefill "" --decode-kernels v6,v5 --decode-timeline --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; grep -v 'timeline\|median over' $O/r/dec.log | grep -E "^(MQA|GQA|xSQA|SQA)" | grep -E " 1 | 8 " | awk '{print $1,$2,$3,$4,$5,$6,$9}' | paste -sd'|'; echo
CUDA_GRAPHS=both timeout 230 bash bench/gpu/e2e/run_e2e.sh $B $O/r/e2e MHA GQA SQA sSQA xSQA > $O/r/e2e.log 2>&1
el "run_e2e rc=$?"; grep -A8 "Decode tokens" $O/r/e2e/gpu_e2e.md | head -12; grep -A8 "Prefill tokens" $O/r/e2e/gpu_e2e.md | head -10
tar -cf $O/r.tar -C $O r && rm -rf $O/r
