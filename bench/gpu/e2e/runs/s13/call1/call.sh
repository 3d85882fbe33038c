#!/bin/bash
# Session 13 call 1: GPU tests (RopeQKWriteKv test included); decode step with RoPE + cache write
# fused off/on; a split-count / in-kernel-merge sweep of the short-context decode attention.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
nvidia-smi > $R/smi.txt 2>&1
s=$(date +%s)
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do $B/sqa-mkmodel --out /tmp/m_$L --preset 1b --layout $L --dtype bf16 --seed 7 > /dev/null 2>&1; done
E="--device cuda --prefill none --cuda-graphs on"
for round in 1 2 3; do for L in MHA xSQA; do for f in off on; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-batch 1,8 --fuse-rope-kv $f \
    --json $R/e2e_${L}_${f}_$round.json > $R/e2e_${L}_${f}_$round.log 2>&1 || echo "e2e $L $f $round failed" >> $R/summary.txt
done; done; done
echo "ab done $(( $(date +%s) - s )) s" >> $R/summary.txt
for L in MHA xSQA; do for sp in 0 2 4 8 16; do for fm in 0 1; do
  $B/sqa-e2e-bench --model /tmp/m_$L $E --decode-batch 1 --decode-splits $sp --decode-fuse-min-keys $fm \
    --json $R/sw_${L}_${sp}_${fm}.json > $R/sw_${L}_${sp}_${fm}.log 2>&1 || echo "sweep $L $sp $fm failed" >> $R/summary.txt
done; done; done
echo "total $(( $(date +%s) - s )) s" >> $R/summary.txt
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
