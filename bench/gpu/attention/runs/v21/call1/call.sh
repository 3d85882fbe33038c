#!/bin/bash
# Session 10, call 1: decode tests (stamps added), v5 phase timeline at the batch-1 rows, and
# the fuse threshold / split sweep at MQA batch 1.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 100 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "PASSED|FAILED" $O/r/attn_test.log | head; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -30
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-ctx 32768,131072 --decode-batch 1,8 --decode-kernels v5,v4 --decode-timeline --json $O/r/tl.json > $O/r/tl.log 2>&1
el "timeline rc=$?"; cat $O/r/tl.log
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768 --decode-batch 1 --decode-kernels v5 --decode-splits 0,96,128,132 --decode-fuse-min-keys 0,128 --decode-timeline --read-floor-max-gb 0 --json $O/r/sw32.json > $O/r/sw32.log 2>&1
el "sweep32 rc=$?"; cat $O/r/sw32.log
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072 --decode-batch 1 --decode-kernels v5 --decode-splits 0,100,120 --decode-timeline --read-floor-max-gb 0 --json $O/r/sw128.json > $O/r/sw128.log 2>&1
el "sweep128 rc=$?"; cat $O/r/sw128.log
nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw --format=csv >> $O/r/smi.txt
tar -cf $O/r.tar -C $O r && rm -rf $O/r
