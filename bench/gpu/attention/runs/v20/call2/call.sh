#!/bin/bash
# Session 9, call 2: decode v5 with the merge passes that take many units at once. Decode tests
# and the other GPU tests (v5 is the default), the full decode table (v5 and v4, with the
# read-only floor), a split sweep for MQA batch 1, and the end-to-end table.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 100 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "OK \]|FAILED" $O/r/attn_test.log; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -40
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $O/r/gpu_tests.log 2>&1
el "run_gpu_tests rc=$?"; grep -E "^== |FAILED|PASSED" $O/r/gpu_tests.log | head -20; grep -B3 -A12 "Failure" $O/r/gpu_tests.log | head -40
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768,131072 --decode-batch 1 --decode-kernels v5 --decode-splits 0,64,96,112,128,132 --read-floor-max-gb 0 --json $O/r/splits.json > $O/r/splits.log 2>&1
el "splits rc=$?"; grep MQA $O/r/splits.log
timeout 240 $B/sqa-attn-bench --prefill "" --decode-kernels v5,v4 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "attn bench rc=$?"; grep -E "read|v5|v4" $O/r/dec.log | awk '{print $1,$2,$3,$4,$5,$6,$9}' | paste -sd'|' | head -c 6000; echo
CUDA_GRAPHS=both timeout 200 bash bench/gpu/e2e/run_e2e.sh $B $O/r/e2e MHA GQA SQA sSQA xSQA > $O/r/e2e.log 2>&1
el "run_e2e rc=$?"; grep -A8 "Decode tokens" $O/r/e2e/gpu_e2e.md | head -12
tar -cf $O/r.tar -C $O r && rm -rf $O/r
