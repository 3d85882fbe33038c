#!/bin/bash
# Session 10, call 3: decode tests (v7, v6 added), then v7 / v6 / v5 / v4 side by side with the
# phase timelines (now with two stamps inside the merge) on the MQA, GQA and xSQA rows.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "PASSED|FAILED|OK \]" $O/r/attn_test.log | head; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -30
timeout 300 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA,xSQA --decode-ctx 32768,131072,1048576 --decode-batch 1,8,32 --decode-kernels v7,v6,v5,v4 --decode-timeline --json $O/r/dec.json > $O/r/dec.log 2>&1
el "decode rc=$?"; grep -v 'timeline\|median over' $O/r/dec.log | grep -E '^(MQA|GQA|xSQA)'
grep -A1 'timeline MQA v[567] ctx 131072 b 1,\|timeline MQA v[567] ctx 32768 b 1,\|timeline MQA v[567] ctx 32768 b 8,' $O/r/dec.log | grep -v '^--'
tar -cf $O/r.tar -C $O r && rm -rf $O/r
