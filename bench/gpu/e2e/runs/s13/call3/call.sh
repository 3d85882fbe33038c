#!/bin/bash
# Session 13 call 3: decode-step split sweep (requested splits = that many active splits spread
# over the real length), MHA and xSQA, batch 1 and 8, contexts 1k/4k/16k.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-steps 24"
for L in MHA xSQA; do for ctx in 1024 4096 16384; do
  for sp in 0 1 2 4 6 8 12 16 24 33 48 66; do
    $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-batch 1 --decode-context $ctx --decode-splits $sp \
      --json $R/sw_${L}_${ctx}_1_$sp.json > /dev/null 2>&1 || echo "sw $L $ctx 1 $sp failed" >> $R/summary.txt
  done
  for sp in 0 1 2 3 4 8; do
    $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-batch 8 --decode-context $ctx --decode-splits $sp \
      --json $R/sw_${L}_${ctx}_8_$sp.json > /dev/null 2>&1 || echo "sw $L $ctx 8 $sp failed" >> $R/summary.txt
  done
  echo "$L $ctx $(( $(date +%s) - s )) s" >> $R/summary.txt
  [ $(( $(date +%s) - s )) -gt 500 ] && break 2
done; done
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
