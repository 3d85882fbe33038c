#!/bin/bash
# Session 9, call 1: decode v5 (merge in the split kernel, early K/V loads, padded merge rows).
# GPU tests on this build (also the first GPU run of 510c950's clean-up), then the decode rows
# of MQA and GQA with v5, v5w (v5 waiting first) and v4 side by side.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 200 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-kernels v5,v5w,v4 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; cat $O/r/dec.log | grep -v "^$" | head -80
tar -cf $O/r.tar -C $O r && rm -rf $O/r
