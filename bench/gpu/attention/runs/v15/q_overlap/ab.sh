#!/bin/bash
# A/B of the prefill prologue change (Q copied while the producer starts): old = 1e308b5 kernels, new = working tree
. .gpu-bundle/env.sh
{ echo "== attention_cuda_test"; timeout 150 .gpu-bundle/attention_cuda_test --gtest_color=no 2>&1; echo "== attention_cuda_test exit $?";
  bash tests/unit/workers/engine/cuda/run_gpu_tests.sh .gpu-bundle; } > $OUT/gpu_tests.log 2>&1
grep -E "^== |PASSED|FAILED" $OUT/gpu_tests.log
grep -q "attention_cuda_test exit 0" $OUT/gpu_tests.log || exit 1
for r in 1 2; do for b in old new; do
  s=$SECONDS
  timeout 120 .gpu-bundle/sqa-attn-bench-$b --prefill 8192,32768 --kernels wgmma --decode-ctx "" --json $OUT/ab_${b}_$r.json > $OUT/ab_${b}_$r.log 2>&1
  echo "$b $r rc=$? $((SECONDS-s)) s"
done; done
tar -cJf $OUT/ab_logs.tar.xz -C $OUT $(cd $OUT && ls ab_*.log) && rm $OUT/ab_*.log
