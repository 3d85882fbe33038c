#!/bin/bash
# Session 17 call 2: the sliced merge kernel (a CTA per 32 columns, one round trip) beside the old
# one, both launching the next early or not, unfused against fused; merge-kernel stamps in the
# timeline. Decode tests first.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 150 $B/attention_cuda_test --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
K="--decode-fuse-min-keys 0,1073741824 --decode-combine-early 0,1 --decode-combine-sliced 0,1"
timeout 150 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 32768,131072 --decode-batch 1,8 --decode-kernels v8,v6 $K --json $R/mqa.json > $R/mqa.log 2>&1; echo "mqa rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072,32768 --decode-batch 1 --decode-kernels v8 --decode-fuse-min-keys 1073741824 --decode-combine-early 1 --decode-combine-sliced 0,1 --decode-timeline --json $R/tl.json > $R/tl.log 2>&1; echo "tl rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 60 $B/sqa-attn-bench --prefill "" --layouts MQA --decode-ctx 131072 --decode-batch 1 --decode-kernels v8 --decode-timeline --json $R/tl_fused.json > $R/tl_fused.log 2>&1; echo "tlf rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 150 $B/sqa-attn-bench --prefill "" --layouts MHA,GQA,xSQA --decode-ctx 32768,131072 --decode-batch 1 --decode-kernels v6 --decode-fuse-min-keys 0,1073741824 --decode-combine-early 1 --decode-combine-sliced 0,1 --decode-early-tiles 0,3 --read-floor-max-gb 0 --json $R/oth.json > $R/oth.log 2>&1; echo "oth rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -3 $R/attn_test.log; grep -E "^MQA +(32768|131072) +1 " $R/mqa.log; grep -v "^ *$" $R/tl.log | grep -E "timeline|merge kernel|median"
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
