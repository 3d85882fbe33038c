#!/bin/bash
# Session 13 call 2: GPU tests + attention tests; decode steps at 1k/4k/16k contexts, call 1's
# binary (old split choice) against this one (splits of >= 4 tiles a stream, spread over each
# sequence's real length); attention decode rows MQA/GQA as a check.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn test rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on"
for round in 1 2 3; do for L in MHA xSQA; do for ctx in 1024 4096 16384; do for v in old new; do
  bin=$B/sqa-e2e-bench; [ $v = old ] && bin=$B/sqa-e2e-bench-old
  $bin --model /tmp/m_$L $E --decode-batch 1,8 --decode-context $ctx \
    --json $R/e2e_${L}_${ctx}_${v}_$round.json > $R/e2e_${L}_${ctx}_${v}_$round.log 2>&1 || echo "e2e $L $ctx $v $round failed" >> $R/summary.txt
done; done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-kernels v6 --decode-ctx 32768,131072 --decode-batch 1,8 --json $R/dec.json > $R/dec.log 2>&1; echo "attn bench rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
