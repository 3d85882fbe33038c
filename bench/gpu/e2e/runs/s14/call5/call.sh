#!/bin/bash
# Session 14 call 5: the register form of the wide kernel (SQA_SKINNY_WIDE=reg) against the ring
# form: backend tests with it (and with one weight on it, SQA_SKINNY_WIDE_LINEAR=1), sqa-gemm-bench
# at 9-32 rows, decode steps at batch 16 / 32.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
SQA_SKINNY_WIDE=reg $B/cuda_backend_test --gtest_color=no > $R/test_reg.log 2>&1; echo "test reg rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
SQA_SKINNY_WIDE=reg SQA_SKINNY_WIDE_LINEAR=1 $B/cuda_backend_test --gtest_color=no > $R/test_reg_linear.log 2>&1; echo "test reg linear rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
SQA_SKINNY_WIDE=reg $B/cuda_engine_test --gtest_color=no > $R/engine_reg.log 2>&1; echo "engine reg rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 9,16,32 --json $R/gemm_ring.json > $R/gemm_ring.log 2>&1; echo "gemm ring rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
SQA_SKINNY_WIDE=reg $B/sqa-gemm-bench --rows 9,16,32 --json $R/gemm_reg.json > $R/gemm_reg.log 2>&1; echo "gemm reg rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32"
for round in 1 2; do for L in MHA xSQA; do for v in ring reg reglin; do
  env=""; [ $v = reg ] && env="SQA_SKINNY_WIDE=reg"; [ $v = reglin ] && env="SQA_SKINNY_WIDE=reg SQA_SKINNY_WIDE_LINEAR=1"
  env $env $B/sqa-e2e-bench --model /tmp/m_$L $E --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
