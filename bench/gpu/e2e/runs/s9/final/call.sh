#!/bin/bash
# Session 9, call 5 (final binaries): all GPU tests, the decode table (v5 and v4 side by side,
# with the read-only floor), the end-to-end table, the step profile of MHA batch 1.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 150 $B/sqa-attn-bench --prefill "" --decode-kernels v5,v4 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; grep -E "MQA|GQA" $O/r/dec.log | grep -E " 1 | 8 " | awk '{print $1,$2,$3,$4,$5,$6,$9}' | paste -sd'|'; echo
CUDA_GRAPHS=both timeout 230 bash bench/gpu/e2e/run_e2e.sh $B $O/r/e2e MHA GQA SQA sSQA xSQA > $O/r/e2e.log 2>&1
el "run_e2e rc=$?"; grep -A8 "Decode tokens" $O/r/e2e/gpu_e2e.md | head -12
timeout 60 bash bench/gpu/e2e/profile_decode.sh $B $O/r/prof MHA 1 > $O/r/prof.log 2>&1
el "profile rc=$?"; head -12 $O/r/prof/step_kernels_MHA_b1.md; rm -f $O/r/prof/*.csv
tar -cf $O/r.tar -C $O r && rm -rf $O/r
