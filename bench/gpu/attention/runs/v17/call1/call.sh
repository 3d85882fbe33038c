#!/bin/bash
# Session 6, call 1: tests of the three branch binaries, SASS spill locations of the persistent
# kernel, then A/B: persistent and poly against the default within one binary (round-robin),
# combine128 against main's binary (alternating).
set -o pipefail
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > $O/r/gpu.txt 2>&1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
# SASS: per function, spills and where they sit relative to the HGMMA span.
cuobjdump -sass $B/sqa-attn-bench-pers 2>/dev/null | awk '
  /Function :/ { if (fn != "") print fn, n, stl, ldl, h0, h1, locs; fn=$3; n=0; stl=0; ldl=0; h0=-1; h1=-1; locs=""; next }
  /\/\*[0-9a-f]+\*\// { n++; if ($0 ~ /HGMMA/) { if (h0 < 0) h0=n; h1=n }
    if ($0 ~ / STL/) { stl++; locs=locs " S" n } if ($0 ~ / LDL/) { ldl++; locs=locs " L" n } }
  END { print fn, n, stl, ldl, h0, h1, locs }' | grep -i -E "persist|Prefill" | cut -c1-600 > $O/r/sass_pers.txt
el "sass done"; grep -i persist $O/r/sass_pers.txt | cut -c1-300
for x in pers poly; do
  timeout 120 $B/attention_cuda_test-$x --gtest_color=no --gtest_filter='*Prefill*' > $O/r/test_$x.log 2>&1; el "test $x rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED" $O/r/test_$x.log | head -5
done
timeout 100 $B/attention_cuda_test-comb --gtest_color=no --gtest_filter='*Decode*:*Merge*' > $O/r/test_comb.log 2>&1; el "test comb rc=$?"; grep -E "^\[  (PASSED|FAILED) |FAILED" $O/r/test_comb.log | head -5
A="--layouts MHA,MQA,xSQA,SQA --prefill 8192,32768 --decode-ctx ,"
timeout 150 $B/sqa-attn-bench-pers --kernels wgmma,persistent $A --json $O/r/ab_pers.json > $O/r/ab_pers.log 2>&1; el "ab pers rc=$?"; cat $O/r/ab_pers.log | head -40
timeout 150 $B/sqa-attn-bench-poly --kernels wgmma,poly --layouts MHA,MQA,xSQA --prefill 8192,32768,131072 --decode-ctx , --json $O/r/ab_poly.json > $O/r/ab_poly.log 2>&1; el "ab poly rc=$?"; cat $O/r/ab_poly.log | head -40
D="--prefill , --layouts MQA --decode-kernels v4 --decode-ctx 32768,131072,524288 --decode-batch 1,8,32"
for r in 1 2; do for x in main comb; do b=$B/sqa-attn-bench; [ $x = comb ] && b=$B/sqa-attn-bench-comb
  timeout 60 $b $D --json $O/r/dec_${x}_$r.json > $O/r/dec_${x}_$r.log 2>&1; el "dec $x $r rc=$?"; done; done
for x in main comb; do b=$B/sqa-attn-bench; [ $x = comb ] && b=$B/sqa-attn-bench-comb
  timeout 30 $b --prefill , --layouts MQA --decode-kernels v4 --decode-ctx 32768,131072 --decode-batch 1 --decode-splits 64,96,132 > $O/r/splits_$x.log 2>&1; done
el "splits done"
cat $O/r/dec_main_1.log | head -30; cat $O/r/dec_comb_1.log | head -30; cat $O/r/splits_*.log | tail -20
tar -cf $O/r.tar -C $O r && rm -rf $O/r
