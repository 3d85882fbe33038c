#!/bin/bash
# Session 16 call 8 (final binaries): decode v8 the default for wide groups (auto), narrow groups on
# v6. Every GPU test (backend, engine, graphs, reference; the whole attention test); the decode
# table (v8 beside v6); the full end-to-end run.
set -uo pipefail
. .gpu-bundle/env.sh
B=$PWD/.gpu-bundle
R=$OUT/r; mkdir -p $R
s=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; echo "tests rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 200 $B/attention_cuda_test --gtest_color=no > $R/attn_test.log 2>&1; echo "attn rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
timeout 120 $B/sqa-attn-bench --prefill "" --decode-kernels v8,v6 --json $R/dec.json > $R/dec.log 2>&1; echo "dec rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
CUDA_GRAPHS=both timeout 250 bash bench/gpu/e2e/run_e2e.sh $B $R/e2e MHA GQA SQA sSQA xSQA > $R/e2e_full.log 2>&1; echo "e2e full rc=$? $(( $(date +%s) - s )) s" >> $R/summary.txt
cat $R/summary.txt; tail -2 $R/gpu_tests.log; tail -3 $R/attn_test.log; grep -E "^MQA +(32768|131072) +1 " $R/dec.log
tar -cf $OUT/r.tar -C $OUT r; rm -rf $OUT/r
