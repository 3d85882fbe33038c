#!/bin/bash
# Session 7, call 5: v5 = v4 + table entries a tile ahead + L2 prefetch of P tiles beyond the stages (P = 0, 2, 4 builds).
. .gpu-bundle/env.sh
O=${OUT:-out}; mkdir -p $O/r
B=.gpu-bundle
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
timeout 120 $B/attention_cuda_test --gtest_filter='*Decode*' > $O/r/test_decode.log 2>&1
el "decode tests (P=2) rc=$?"; grep -E "OK \]|FAILED" $O/r/test_decode.log | head; grep -m5 -B2 -A6 "Failure" $O/r/test_decode.log | head -30
tab() { grep -E " v[45] " $1 | awk '{print $1,$2,$3,$4,$5,$6}' | paste - - | awk '{printf "%s %s %s v5 %s(%s) v4 %s(%s) v4/v5 %.3f\n",$1,$2,$3,$6,$5,$12,$11,$12/$6}'; }
for P in 2 4 0; do
timeout 150 $B/sqa-attn-bench-p$P --prefill "" --layouts MQA,GQA --decode-kernels v5,v4 --read-floor-max-gb 0 --json $O/r/dec_p$P.json > $O/r/dec_p$P.log 2>&1
el "P=$P rc=$?"; tab $O/r/dec_p$P.log
done
tar -cf $O/r.tar -C $O r && rm -rf $O/r
