#!/bin/bash
# Session 15 call 7 (final): the stream form where it is the faster choice (skinny_stream "auto":
# 9-32 rows, plans of at most 3 K splits: the 1b preset's gate/up and LM head). Every GPU test
# (the stream form forced on every shape in StreamFormMatchesTheCpu); sqa-gemm-bench at 1-64
# rows; decode steps at batch 16 / 32, stream form off / auto, three layouts, two rounds; the full
# end-to-end run.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 1,8,9,16,24,32,48,64 --json $R/gemm.json > $R/gemm.log 2>&1; echo "gemm rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA SQA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32"
for round in 1 2; do for L in MHA SQA xSQA; do for v in off auto; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --skinny-stream $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
CUDA_GRAPHS=both bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo "e2e full rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
