#!/bin/bash
# Session 14 call 7: the attention GPU tests of the final binaries (call 6 ran the others).
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn test rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
