#!/bin/bash
# Session 16 call 7 (final): decode v8 the default (auto). Every GPU test of the backend, engine
# and graphs; decode steps with --decode-kernel v6 against auto (v8), two layouts, batch 1 and 32,
# two rounds; the full end-to-end run.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on --decode-batch 1,32"
for round in 1 2; do for L in MHA xSQA; do for v in v6 auto; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-kernel $v --json $R/e2e_${L}_${v}_$round.json > $R/e2e_${L}_${v}_$round.log 2>&1 || echo "e2e $L $v $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
rm -rf /tmp/m_*
CUDA_GRAPHS=both bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo "e2e full rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -3 $R/gpu_tests.log; grep -h "ms/step\|tok/s" $R/e2e_*_1.log | head -20
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
