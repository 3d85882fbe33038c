#!/bin/bash
# Session 15 call 2: call 1 plus split-K variants of the heuristic's first four algorithms, and W evicted by a read sweep instead of a memset (LtGemm
# autotune). GPU tests (the new cuda_gemm_test first); sqa-gemm-bench at 1-32 rows with every
# heuristic candidate timed (--lt-sweep on); decode steps at batch 16/32/64 with the measured
# choice off (--gemm-autotune-rows 0) and on (64), three layouts, two rounds.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
$B/cuda_gemm_test --gtest_color=no > $R/gemm_test.log 2>&1; echo "gemm_test rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 9,16,24,32 --lt-sweep on --json $R/gemm.json > $R/gemm.log 2>&1; echo "gemm rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA SQA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32,64"
for round in 1 2; do for L in MHA SQA xSQA; do for v in 0 64; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --gemm-autotune-rows $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
