#!/bin/bash
# Session 15 call 3: the skinny kernel's stream form (W and x through a bulk-copy ring, 9-64 rows).
# GPU tests (attention too: its shared-memory helpers moved to cp_async.cuh); sqa-gemm-bench at
# 1-64 rows (cuBLASLt, narrow/wide, stream); decode steps at batch 16/32/64 with the stream form
# off (--skinny-stream-rows 0) and on (64), three layouts, two rounds.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-gemm-bench --rows 1,8,9,16,24,32,48,64 --json $R/gemm.json > $R/gemm.log 2>&1; echo "gemm rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA SQA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 16,32,64"
for round in 1 2; do for L in MHA SQA xSQA; do for v in 0 64; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --skinny-stream-rows $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
