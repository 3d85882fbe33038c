#!/bin/bash
# Session 6, call 2: GPU tests of the slack build (B), then A/B of prefill against the previous
# kernels (A = main's kernels before the change), alternating A B A B; a decode split sweep.
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $O/r/gpu.txt 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no > $O/r/test_b.log 2>&1; el "test b rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED|OK \]" $O/r/test_b.log | head -12
A="--kernels wgmma --layouts MHA,MQA,SQA,xSQA --prefill 8192,32768,131072 --decode-ctx ,"
for r in 1 2; do for x in a b; do b=$B/sqa-attn-bench; [ $x = a ] && b=$B/sqa-attn-bench-a
  timeout 110 $b $A --json $O/r/ab_${x}_$r.json > $O/r/ab_${x}_$r.log 2>&1; el "ab $x $r rc=$?"; done; done
timeout 60 $B/sqa-attn-bench --prefill , --layouts MQA --decode-kernels v4 --decode-ctx 131072,524288,1048576 --decode-batch 1 --decode-splits 0,64,80,96,112,132 --json $O/r/splits_b1.json > $O/r/splits_b1.log 2>&1; el "splits b1 rc=$?"
timeout 60 $B/sqa-attn-bench --prefill , --layouts MQA,GQA,MHA --decode-kernels v4 --decode-ctx 32768,131072 --decode-batch 8 --decode-splits 0,8,12,16,24 --json $O/r/splits_b8.json > $O/r/splits_b8.log 2>&1; el "splits b8 rc=$?"
for r in 1 2; do for x in a b; do echo "== $x $r"; grep -E "paged64" $O/r/ab_${x}_$r.log; done; done
grep -E "^(MQA|GQA|MHA) " $O/r/splits_b1.log $O/r/splits_b8.log
tar -cf $O/r.tar -C $O r && rm -rf $O/r
