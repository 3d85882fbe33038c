#!/bin/bash
# Session 15 call 9: the final binaries (LinearMany decides per weight whether to take the stream form,
# as Linear does: call 8 failed the LinearMany-of-two-vs-alone test). Every GPU
# test (the attention test too); one decode run per layout at batch
# 16 / 32 to check the step times against call 7.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt

for L in MHA SQA xSQA; do
  $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1
  $B/sqa-e2e-bench --model /tmp/m_$L --device cuda --prefill none --cuda-graphs on --decode-batch 16,32 --json $R/e2e_${L}.json > $R/e2e_${L}.log 2>&1 || echo "e2e $L failed" >> $R/summary.txt
  rm -rf /tmp/m_$L
done
echo "e2e done $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
