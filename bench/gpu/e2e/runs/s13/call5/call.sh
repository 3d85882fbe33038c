#!/bin/bash
# Session 13 call 5: prefill with RoPE + cache write fused (on) and as two kernels (off), same
# binary, MHA and xSQA, 8k and 128k, two rounds alternating.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
for round in 1 2; do for L in MHA xSQA; do for f in off on; do
  $B/sqa-e2e-bench --model /tmp/m_$L --device cuda --prefill 8192,131072 --decode-batch none --fuse-rope-kv $f \
    --json $R/pf_${L}_${f}_$round.json > /dev/null 2>&1 || echo "pf $L $f $round failed" >> $R/summary.txt
done; done; done
echo "total $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
