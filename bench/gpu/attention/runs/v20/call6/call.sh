#!/bin/bash
# Session 9, call 6: the final commit's binaries (resident-CTA count per device; comments): all
# GPU tests, and the MQA/GQA batch-1 decode rows to check that the in-kernel merge still runs.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-ctx 32768,131072 --decode-batch 1 --decode-kernels v5,v4 --read-floor-max-gb 0 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; grep -E "MQA|GQA" $O/r/dec.log
tar -cf $O/r.tar -C $O r && rm -rf $O/r
