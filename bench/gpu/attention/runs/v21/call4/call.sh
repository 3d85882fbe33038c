#!/bin/bash
# Session 10, call 4: decode tests (v7 = v6 with the first CTAs to finish merging from an arrival
# list), then v7 / v6 / v5 / v4 side by side with timelines on the MQA, GQA, xSQA and MHA rows.
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/attn_test.log 2>&1
el "attention_cuda_test rc=$?"; grep -E "PASSED|FAILED|OK \]" $O/r/attn_test.log | head; grep -B2 -A10 "Failure" $O/r/attn_test.log | head -30
timeout 300 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA,xSQA,MHA --decode-ctx 32768,131072,1048576 --decode-batch 1,8,32 --decode-max-gb 5 --decode-kernels v7,v6,v5,v4 --decode-timeline --json $O/r/dec.json > $O/r/dec.log 2>&1
el "decode rc=$?"; grep -v 'timeline\|median over' $O/r/dec.log | grep -E '^(MQA|GQA|xSQA|MHA)' | awk '{printf "%s %s %s %s %s %s %s|", $1,$2,$3,$4,$5,$6,$9} END {print ""}'
grep -A1 'timeline MQA v[67] ctx 131072 b 1,\|timeline MQA v[67] ctx 32768 b 1,\|timeline MQA v[67] ctx 32768 b 8,' $O/r/dec.log | grep -v '^--'
tar -cf $O/r.tar -C $O r && rm -rf $O/r
