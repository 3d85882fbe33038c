#!/bin/bash
# Session 10, call 2: decode tests (v6 added; v5/v6 fused from 32 keys), the decode table with
# v6, v5 and v4 side by side and v5/v6 timelines, and the MQA 32k batch-1 split sweep for v6.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "PASSED|FAILED|OK \]" $O/r/attn_test.log | head; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -30
timeout 300 $B/sqa-attn-bench --prefill "" --decode-kernels v6,v5,v4 --decode-timeline --json $O/r/dec.json > $O/r/dec.log 2>&1
el "decode table rc=$?"; grep -v timeline $O/r/dec.log | grep -v 'median over' ; grep -A1 'timeline MQA' $O/r/dec.log | grep -B1 -A0 'ctx 131072 b 1\|ctx 32768 b 1' | head -20
grep -A1 'timeline MQA v[56] ctx 131072 b 1\|timeline MQA v[56] ctx 32768 b 1' $O/r/dec.log
timeout 100 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768 --decode-batch 1 --decode-kernels v6 --decode-splits 0,128 --decode-fuse-min-keys 0,128 --decode-timeline --read-floor-max-gb 0 --json $O/r/sw32.json > $O/r/sw32.log 2>&1
el "sweep32 rc=$?"; cat $O/r/sw32.log
tar -cf $O/r.tar -C $O r && rm -rf $O/r
