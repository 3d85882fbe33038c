set -x
. .gpu-bundle/env.sh
B=.gpu-bundle; R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $R/smi.txt
timeout 120 bash tests/unit/workers/engine/cuda/run_gpu_tests.sh $B > $R/gpu_tests.log 2>&1; tail -3 $R/gpu_tests.log
grep -E "FAILED|PASSED" $R/gpu_tests.log | head
timeout 120 $B/attention_cuda_test --gtest_filter='*Decode*:*Merge*' > $R/attn_test.log 2>&1; echo rc=$? >> $R/attn_test.log; tail -2 $R/attn_test.log
for rep in 1 2; do
  timeout 60 $B/sqa-gemm-bench-old --rows 1,8 --json $R/gemm_old_$rep.json > $R/gemm_old_$rep.log 2>&1
  for w in auto 8 16; do
    timeout 60 $B/sqa-gemm-bench --rows 1,8 --skinny-warps $w --json $R/gemm_${w}_$rep.json > $R/gemm_${w}_$rep.log 2>&1
  done
done
for l in MHA xSQA; do
  m=/tmp/m_$l
  $B/sqa-mkmodel --out $m --preset 1b --layout $l --dtype bf16 --seed 7 > /dev/null
  for rep in 1 2; do
    for w in auto 8; do
      timeout 90 $B/sqa-e2e-bench --model $m --device cuda --prefill none --decode-batch 1,8 --cuda-graphs on --skinny-warps $w --json $R/e2e_${l}_${w}_$rep.json > $R/e2e_${l}_${w}_$rep.log 2>&1
    done
  done
  rm -rf $m
done
grep -h "ms_per_step" $R/e2e_*.json | head -2
tar -cf $OUT/r.tar -C $OUT r
