#!/bin/bash
# Session 6, call 3: GPU tests of v18 (B), A/B of prefill v17 (A) against v18 (B), A B A B, then
# the full attention bench of B.
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $O/r/gpu.txt 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
{ $B/attention_cuda_test --gtest_color=no; bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B; } > $O/r/gpu_tests.log 2>&1
el "tests rc=$?"; grep -E "^\[  (PASSED|FAILED) |^== exit|FAILED" $O/r/gpu_tests.log | head -20
A="--kernels wgmma --layouts MHA,MQA,SQA,xSQA --prefill 8192,32768,131072 --decode-ctx ,"
for r in 1 2; do for x in a b; do b=$B/sqa-attn-bench; [ $x = a ] && b=$B/sqa-attn-bench-a
  timeout 80 $b $A --json $O/r/ab_${x}_$r.json > $O/r/ab_${x}_$r.log 2>&1; el "ab $x $r rc=$?"; done; done
for r in 1 2; do for x in a b; do echo "== $x $r"; grep -E "paged64" $O/r/ab_${x}_$r.log | awk '{printf "%s/%s:%s ", $1,$2,$6}'; echo; done; done
timeout 265 $B/sqa-attn-bench --kernels wgmma --json $O/r/attn.json > $O/r/attn.log 2>&1
el "bench rc=$?"
tail -c 1500 $O/r/attn.log
tar -cf $O/r.tar -C $O r && rm -rf $O/r
