#!/bin/bash
# Session 10, call 6 (after the last read of the change): the merge's output store factored into
# one lambda and RmsNorm / AddRmsNorm (bf16x8) made one kernel template. All GPU tests, then the
# MQA / GQA batch-1 and -8 decode rows (v6, v5) as a check that nothing moved.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 180 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED|PASSED" $O/r/attn_test.log | tail -10; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 100 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-ctx 32768,131072 --decode-batch 1,8 --decode-kernels v6,v5 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; grep -E "^(MQA|GQA)" $O/r/dec.log | awk '{print $1,$2,$3,$4,$5,$6,$9}' | paste -sd'|'; echo
tar -cf $O/r.tar -C $O r && rm -rf $O/r
