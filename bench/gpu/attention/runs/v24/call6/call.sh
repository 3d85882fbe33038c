#!/bin/bash
# Session 17 call 6: after the timeline stamps were factored (commit 8636ccc): the decode and
# merge attention tests, and the MQA 128k/32k batch-1 timelines of v10 beside v8.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072,32768 --decode-batch 1 --decode-kernels v10,v8 --decode-timeline --json $R/tl.json > $R/tl.log 2>&1; echo "tl rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -3 $R/attn_test.log; grep -v "^ *$" $R/tl.log | tail -12
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
