#!/bin/bash
# Session 15 call 6: the stream form with its consumers as one warpgroup multiplying each stage with
# wgmma (n = 16, 32, 64) from the swizzled TMA boxes. sqa-gemm-bench with split plans aimed at 1 or 2 CTAs per SM and at
# least 2 or 4 stages a split (SQA_STREAM_CTAS_PER_SM / SQA_STREAM_MIN_CHUNKS, experiment knobs);
# the backend tests; decode steps, stream form off/on, with the default plan (1, 2).
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
$B/cuda_backend_test --gtest_color=no > $R/backend_test.log 2>&1; echo "backend rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for v in "1 2" "2 2" "2 4"; do set -- $v
  SQA_STREAM_CTAS_PER_SM=$1 SQA_STREAM_MIN_CHUNKS=$2 $B/sqa-gemm-bench --rows 9,16,32,64 --json $R/gemm_$1_$2.json > $R/gemm_$1_$2.log 2>&1; echo "gemm $1 $2 rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
done
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32,64"
for round in 1 2; do for L in MHA xSQA; do for v in 0 64; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --skinny-stream-rows $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
