#!/bin/bash
# Session 17 call 7: the read-only kernel through the shuffled block tables (--read-floor-paged)
# beside the contiguous one, at 8 and 2 CTAs per SM, with v10 in the same run.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
timeout 120 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-ctx 32768,131072 --decode-batch 1,8 --decode-kernels v10 --read-floor-paged --read-floor-ctas 8,2 --json $R/paged.json > $R/paged.log 2>&1; echo "rc=$?" >> $R/paged.log
grep -v "^ *$" $R/paged.log | tail -30
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
