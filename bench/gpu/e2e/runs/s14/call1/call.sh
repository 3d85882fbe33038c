#!/bin/bash
# Session 14 call 1: GPU tests with the skinny GEMM's wide form (9-32 rows); sqa-gemm-bench at
# 1-32 rows; decode steps at batch 16 and 32, wide form off (--skinny-max-rows 8) / on.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
nvidia-smi > $R/smi.txt 2>&1
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 1,8,9,16,24,32 --json $R/gemm.json > $R/gemm.log 2>&1; echo "gemm rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32"
for round in 1 2; do for L in MHA xSQA; do for v in 8 0; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --skinny-max-rows $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
