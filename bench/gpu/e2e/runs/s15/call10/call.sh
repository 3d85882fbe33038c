#!/bin/bash
# Session 15 call 10: after the review, the wide and stream forms share one split plan and one
# merge of the splits (the merging CTA now reads its own partial back and issues several splits'
# loads before their adds; same order of adds, so the same bits); the projection tests share
# their setup. Every GPU test; the gemm bench at 9-32 rows; one decode run per layout at batch 16 / 32.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 9,16,32 --json $R/gemm.json > $R/gemm.log 2>&1; echo "gemm rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA SQA xSQA; do
  $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1
  $B/sqa-e2e-bench --model /tmp/m_$L --device cuda --prefill none --cuda-graphs on --decode-batch 16,32 --json $R/e2e_${L}.json > $R/e2e_${L}.log 2>&1 || echo "e2e $L failed" >> $R/summary.txt
  rm -rf /tmp/m_$L
done
echo "e2e done $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
