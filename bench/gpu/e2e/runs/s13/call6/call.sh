#!/bin/bash
# Session 13 call 6: tiles dealt evenly to the splits (no empty split): GPU tests + attention
# tests; decode steps against call 4's binary (prev); the full attention decode table.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn test rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on"
for round in 1 2; do for L in MHA xSQA; do for ctx in 1024 4096 16384; do for v in prev new; do
  bin=$B/sqa-e2e-bench; [ $v = prev ] && bin=$B/sqa-e2e-bench-prev
  $bin --model /tmp/m_$L $E --decode-batch 1,8 --decode-context $ctx \
    --json $R/e2e_${L}_${ctx}_${v}_$round.json > /dev/null 2>&1 || echo "e2e $L $ctx $v $round failed" >> $R/summary.txt
done; done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
$B/sqa-attn-bench --prefill "" --decode-kernels v6,v5 --decode-timeline --json $R/dec.json > $R/dec.log 2>&1; echo "attn bench rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
