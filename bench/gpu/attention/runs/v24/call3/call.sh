#!/bin/bash
# Session 17 call 3: the merge kernel letting the next launch start once it has its partials
# (combine_trigger 2) beside at entry (1); sliced or not; every stage early or not; a split sweep
# at 32k. Decode tests first.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
K="--decode-fuse-min-keys 0,1073741824 --decode-early-tiles 0,3 --decode-combine-trigger 1,2 --decode-combine-sliced 0,1"
timeout 150 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768,131072 --decode-batch 1 --decode-kernels v8,v6 $K --json $R/mqa.json > $R/mqa.log 2>&1; echo "mqa rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 100 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768 --decode-batch 1 --decode-kernels v8 --decode-splits 64,96,128,132 --decode-fuse-min-keys 1073741824 --decode-early-tiles 0,3 --decode-combine-trigger 1,2 --decode-combine-sliced 1 --json $R/splits.json > $R/splits.log 2>&1; echo "splits rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072,32768 --decode-batch 1 --decode-kernels v8 --decode-fuse-min-keys 1073741824 --decode-early-tiles 0,3 --decode-combine-trigger 2 --decode-combine-sliced 1 --decode-timeline --json $R/tl.json > $R/tl.log 2>&1; echo "tl rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -3 $R/attn_test.log; grep -E "^MQA +(32768|131072) +1 " $R/mqa.log $R/splits.log | grep -v "fuse-min 1073741824 early-tiles 3 trigger 1 *$"; grep -v "^ *$" $R/tl.log | grep -E "timeline|merge kernel|median"
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
