#!/bin/bash
# Session 7, call 4: decode tests (v5: table entries a tile ahead, 32-column combine, wide groups as 16-row groups),
# v5 vs v4 rows (MQA, GQA, MHA), and the variant build with wide groups kept wide (-w).
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 120 $B/attention_cuda_test --gtest_filter='*Decode*' > $O/r/test_decode.log 2>&1
el "decode tests rc=$?"; grep -E "OK \]|FAILED" $O/r/test_decode.log | head; grep -m5 -B2 -A6 "Failure" $O/r/test_decode.log | head -30
tab() { grep -E " v[45] " $1 | awk '{print $1,$2,$3,$4,$5,$6}' | paste - - | awk '{printf "%s %s %s v5 %s(%s) v4 %s(%s) v4/v5 %.3f\n",$1,$2,$3,$6,$5,$12,$11,$12/$6}'; }
timeout 200 $B/sqa-attn-bench --prefill "" --layouts MQA,GQA,MHA --decode-kernels v5,v4 --read-floor-max-gb 0 --json $O/r/dec.json > $O/r/dec.log 2>&1
el "dec rc=$?"; tab $O/r/dec.log
timeout 100 $B/sqa-attn-bench-w --prefill "" --layouts MQA --decode-kernels v5,v4 --read-floor-max-gb 0 --json $O/r/dec_w.json > $O/r/dec_w.log 2>&1
el "dec_w rc=$?"; tab $O/r/dec_w.log
tar -cf $O/r.tar -C $O r && rm -rf $O/r
