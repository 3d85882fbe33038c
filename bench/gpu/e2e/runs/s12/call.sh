#!/bin/bash
# Call 1: GPU tests with the residual ops inside the GEMMs, then the decode step with them off/on.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
nvidia-smi > $R/smi.txt 2>&1
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
for round in 1 2 3; do for L in MHA xSQA; do for f in off on; do
  $B/sqa-e2e-bench --model /tmp/m_$L --device cuda --prefill none --decode-batch 1,8 --cuda-graphs on --fuse-residual $f \
    --json $R/e2e_${L}_${f}_$round.json > $R/e2e_${L}_${f}_$round.log 2>&1 || echo "e2e $L $f $round failed" >> $R/summary.txt
done; done; done
# echo "total $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r
