#!/bin/bash
# Session 13 call 4 (final): GPU tests + attention tests of the final binaries; decode steps at
# 1k/4k/16k, call 1's binary (fused RoPE + cache write, old split choice) against the final one;
# attention decode rows (MQA/GQA) as a check; the full end-to-end run with transformers.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn test rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on"
for round in 1 2; do for L in MHA xSQA; do for ctx in 1024 4096 16384; do for v in old new; do
  bin=$B/sqa-e2e-bench; [ $v = old ] && bin=$B/sqa-e2e-bench-old
  $bin --model /tmp/m_$L $E --decode-batch 1,8 --decode-context $ctx \
    --json $R/e2e_${L}_${ctx}_${v}_$round.json > /dev/null 2>&1 || echo "e2e $L $ctx $v $round failed" >> $R/summary.txt
done; done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-attn-bench --prefill "" --layouts MQA,GQA --decode-kernels v6 --decode-ctx 32768,131072 --decode-batch 1,8 --json $R/dec.json > $R/dec.log 2>&1; echo "attn bench rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
CUDA_GRAPHS=both bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo "e2e full rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
