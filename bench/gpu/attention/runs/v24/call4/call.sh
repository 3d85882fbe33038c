#!/bin/bash
# Session 17 call 4: decode v10 the default (auto). Every GPU test (backend, engine, graphs,
# reference; the whole attention test); the decode table (v10 beside v8, the previous default);
# the 1b decode steps with v10 against v8 (two rounds); the full end-to-end run.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 240 $B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 200 $B/sqa-attn-bench --prefill "" --decode-kernels v10,v8 --json $R/dec.json > $R/dec.log 2>&1; echo "dec rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 1,32"
for round in 1 2; do for L in MHA xSQA; do for v in v8 auto; do
  timeout 60 $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-kernel $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
CUDA_GRAPHS=both timeout 250 bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo "e2e full rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -2 $R/gpu_tests.log; tail -3 $R/attn_test.log; grep -E "^MQA +(32768|131072) +1 " $R/dec.log; for f in $R/e2e_*_[12].log; do echo "$(basename $f): $(grep -h 'ms/step' $f | sed 's/.*tok\/s, //' | tr '\n' ' ')"; done
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
